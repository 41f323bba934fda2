"""Malformed prompts, image folders and paths: one line naming the problem and the fix, no traceback, exit
status 2 where the command cannot go on, good output untouched; images readable in any mode are converted and
used, unreadable ones skipped and counted. (Malformed configs: test_malformed_configs.py.)"""

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from runs import one_error_line, tiny_run

from film_diffusion.cli import main
from film_diffusion.data.folder import ImageFolderDataset
from film_diffusion.errors import UserError
from film_diffusion.sample import read_prompts


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("tiny") / "run", "train.max_steps=1") / "pipeline"


# Prompts

@pytest.mark.parametrize("prompt, message", [
    ("", "Prompt 1 is empty"),
    ("   \t ", "Prompt 1 is empty"),
    ("\x00\x07\x1b", "Prompt 1 is empty"),  # only control characters
], ids=["empty", "white space", "control characters only"])
def test_an_empty_prompt_is_refused_and_nothing_written(prompt, message, pipeline, tmp_path, capsys):
    good = tmp_path / "grid.png"
    good.write_bytes(b"an earlier grid")
    assert main(["sample", str(pipeline), "--prompt", "a red circle", "--prompt", prompt, "--out", str(good)]) == 2
    assert message.replace("1", "2") in one_error_line(capsys, "sample")
    assert good.read_bytes() == b"an earlier grid"


def sample(pipeline, out, *args) -> list[np.ndarray]:
    assert main(["sample", str(pipeline), *args, "--steps", "2", "--num-per-prompt", "1", "--out", str(out)]) == 0
    return [np.asarray(Image.open(p)) for p in sorted(out.with_suffix("").glob("*.png"))]


def test_control_characters_inside_a_prompt_are_spaces(pipeline, tmp_path):
    clean = sample(pipeline, tmp_path / "a.png", "--prompt", "a red circle")
    dirty = sample(pipeline, tmp_path / "b.png", "--prompt", "a\x1b red\x00 circle\r")
    assert np.array_equal(clean[0], dirty[0])
    assert (tmp_path / "b" / "captions.txt").read_text() == "000 a red circle\n"


def test_a_ten_thousand_character_prompt_samples_as_its_first_tokens(pipeline, tmp_path):
    words = ("a large red circle at the top left " * 400)[:10_000]
    long = sample(pipeline, tmp_path / "long.png", "--prompt", words)
    short = sample(pipeline, tmp_path / "short.png", "--prompt", " ".join(words.split()[:200]))  # past 77 tokens
    assert np.array_equal(long[0], short[0])
    assert Image.open(tmp_path / "long.png").height < 400  # the label is cut, the grid stays a grid


def test_a_prompts_file_with_bad_bytes_blank_lines_or_missing(pipeline, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a red circle\n\xc3\x28 blue\n")
    assert main(["sample", str(pipeline), "--prompts-file", str(bad)]) == 2
    assert f"Prompts file '{bad}' is not UTF-8 text (byte 13); save it as UTF-8." in one_error_line(capsys, "sample")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n")
    assert main(["sample", str(pipeline), "--prompts-file", str(blank)]) == 2
    assert "Nothing to sample: pass --prompt TEXT" in one_error_line(capsys, "sample")
    assert main(["sample", str(pipeline), "--prompts-file", str(tmp_path / "none.txt")]) == 2
    assert f"Prompts file '{tmp_path / 'none.txt'}' does not exist" in one_error_line(capsys, "sample")
    assert read_prompts([], blank) == [] and read_prompts(["x\x00y"], None) == ["x y"]


# Image folders: each mode PIL reads is used as a viewer shows it; an unreadable file is skipped and counted.

def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def solid(mode: str, value, size=(8, 8)) -> Image.Image:
    return Image.new(mode, size, value)


def palette_with_alpha() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 255] + [0, 0, 0] * 255)  # index 0: blue, fully transparent below
    return encoded(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [solid("RGB", (255, 0, 0)), solid("RGB", (0, 0, 255))]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit(value: int) -> bytes:
    return encoded(Image.fromarray(np.full((8, 8), value, np.uint16)), "PNG")


READABLE = {  # file name -> (bytes, the RGB a viewer shows)
    "cmyk.jpg": (encoded(solid("CMYK", (0, 255, 255, 0)), "JPEG", quality=100), (255, 0, 0)),
    "grey16.png": (sixteen_bit(65535 // 2), (128, 128, 128)),  # PIL alone would clip it to white
    "palette_alpha.png": (palette_with_alpha(), (255, 255, 255)),  # transparent: over white
    "animated.gif": (animated_gif(), (255, 0, 0)),  # the first frame
    "one_pixel.png": (encoded(solid("RGB", (0, 255, 0), (1, 1)), "PNG"), (0, 255, 0)),
    "grey_alpha.png": (encoded(solid("LA", (0, 128)), "PNG"), (127, 127, 127)),  # half black over white
    "rgba.png": (encoded(solid("RGBA", (0, 0, 0, 0)), "PNG"), (255, 255, 255)),
    "grey.png": (encoded(solid("L", 200), "PNG"), (200, 200, 200)),
}
UNREADABLE = {
    "truncated.jpg": encoded(solid("RGB", (255, 0, 0), (64, 64)), "JPEG")[:300],
    "empty.png": b"",
    "notes.png": b"this is a text file, not an image\n",
}


@pytest.mark.parametrize("name", sorted(READABLE))
def test_an_image_in_any_readable_mode_is_converted_and_used(name, tmp_path):
    content, rgb = READABLE[name]
    (tmp_path / name).write_bytes(content)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": name, "text": "a thing"}) + "\n")
    dataset = ImageFolderDataset(tmp_path, 16)
    assert len(dataset) == 1 and not dataset.skipped
    image = dataset[0]["image"]
    assert image.shape == (3, 16, 16)
    expected = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1
    assert torch.allclose(image, expected.expand_as(image), atol=3 / 127.5), (name, image[:, 0, 0])


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_an_unreadable_image_is_skipped_named_and_counted(name, tmp_path, caplog):
    (tmp_path / name).write_bytes(UNREADABLE[name])
    (tmp_path / "good.png").write_bytes(READABLE["grey.png"][0])
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": "x"}) + "\n"
                                                     for f in (name, "good.png")))
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(tmp_path, 16)  # reads its first image, the broken one
        items = [dataset[i]["image"] for i in range(2)]
    assert len(dataset) == 2 and dataset.skipped == [tmp_path / name]
    assert torch.equal(items[0], items[1])  # the broken image's place: the next readable one
    assert f"Skipping unreadable image {tmp_path / name}" in caplog.text
    assert "1 of 2 images skipped so far" in caplog.text and caplog.text.count("Skipping") == 1


@pytest.mark.parametrize("lines, message", [
    (['{"file_name": "a.png", "text": "x"', ], "Line 1 of {m} is not a JSON object with \"file_name\" and \"text\""),
    (['{"file_name": "a.png"}'], "Line 1 of {m} is not a JSON object"),
    (['{"text": "x"}'], "Line 1 of {m} is not a JSON object"),
    (['["a.png", "x"]'], "Line 1 of {m} is not a JSON object"),
    (['{"file_name": "a.png", "text": "x"}', '{"file_name": "b.png", "text": "y"}'],
     "Line 2 of {m} names b.png, which is not in"),
    ([], "No readable image is listed in {m}"),
], ids=["bad JSON", "no text", "no file_name", "not an object", "missing image", "no rows"])
def test_a_bad_metadata_row_is_one_line_naming_it(lines, message, tmp_path):
    (tmp_path / "a.png").write_bytes(READABLE["grey.png"][0])
    metadata = tmp_path / "metadata.jsonl"
    metadata.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(UserError) as caught:
        ImageFolderDataset(tmp_path, 16)
    assert message.format(m=metadata) in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_without_metadata_or_only_unreadable_images_stops_training(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    run = ["train.max_steps=1", "train.eval_every=0", "data.name=folder", f"data.root={folder}"]
    config = tmp_path / "c.yaml"
    config.write_text("seed: 0\n")
    assert main(["train", str(config), f"output_dir={tmp_path / 'run'}", *run]) == 2
    assert f"No metadata.jsonl in {folder}; add one" in one_error_line(capsys, "train")
    (folder / "empty.png").write_bytes(b"")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "empty.png", "text": "x"}) + "\n")
    assert main(["train", str(config), f"output_dir={tmp_path / 'run'}", *run]) == 2
    assert "No readable image is listed in" in one_error_line(capsys, "train")
    assert not (tmp_path / "run").exists()


# Paths named on the command line that do not exist

@pytest.mark.parametrize("args, message", [
    (["train", "{t}/none.yaml"], "Config file '{t}/none.yaml' does not exist"),
    (["train", "{t}/c.yaml", "--resume", "{t}/checkpoint-3"],
     "--resume '{t}/checkpoint-3' is not a complete checkpoint"),
    (["sample", "{t}/none", "--prompt", "x"], "'{t}/none' does not exist; pass a run folder or a pipeline folder"),
    (["compare", "{t}/none.yaml"], "Config file '{t}/none.yaml' does not exist"),
    (["analyze", "{t}/none"], "'{t}/none'"),
    (["pretrain-clip", "{t}/none.yaml"], "Config file '{t}/none.yaml' does not exist"),
], ids=["train config", "resume checkpoint", "sample folder", "compare config", "analyze run", "clip config"])
def test_a_missing_path_is_one_line(args, message, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f"output_dir: {tmp_path / 'run'}\n")
    args = [a.format(t=tmp_path) for a in args]
    assert main(args) == 2
    assert message.format(t=tmp_path) in one_error_line(capsys, args[0])
    assert not (tmp_path / "run").exists()

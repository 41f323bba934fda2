"""`film-diffusion sample`: a labelled grid and the images, the same bytes for the same seed, one-line errors."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from tiny_pipelines import SIZE, builtin_text_pipeline, class_denoiser

from film_diffusion.cli import main
from film_diffusion.pipelines import FilmDiffusionPipeline


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "pipeline"  # a run folder's pipeline/
    builtin_text_pipeline("dit").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class-pipe")
    FilmDiffusionPipeline(class_denoiser(), DDIMScheduler()).save_pretrained(folder)
    return folder


def test_sample_writes_the_grid_and_each_image_and_repeats_bytes(text_folder, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small blue star\n\n  a green triangle at the bottom  \n")
    args = [str(text_folder.parent), "--prompt", "a large red circle", "--prompts-file", str(prompts), "--steps", "3",
            "--num-per-prompt", "2", "--seed", "7", "--scheduler", "dpm++"]
    assert main(["sample", *args, "--out", str(tmp_path / "a" / "grid.png")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["sample", *args, "--out", str(tmp_path / "b" / "grid.png")]) == 0
    images = sorted(p.name for p in (tmp_path / "a" / "grid").glob("*.png"))
    assert images == [f"{r:03d}_{c:02d}.png" for r in range(3) for c in range(2)]
    assert Image.open(tmp_path / "a" / "grid" / "000_00.png").size == (SIZE, SIZE)
    assert (tmp_path / "a" / "grid" / "captions.txt").read_text().splitlines() == [
        "000 a large red circle", "001 a small blue star", "002 a green triangle at the bottom"]
    grid = Image.open(tmp_path / "a" / "grid.png")
    assert grid.height >= 3 * 96 and grid.width > 2 * 96
    for name in ["grid.png"] + [f"grid/{n}" for n in images]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert main(["sample", *args[:-2], "--seed", "8", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes() != (tmp_path / "a" / "grid.png").read_bytes()
    # A second run into the same place leaves no image of the first one behind, and nothing else is touched.
    (tmp_path / "a" / "grid" / "notes.md").write_text("mine")
    assert main(["sample", str(text_folder), "--prompt", "one", "--steps", "1", "--num-per-prompt", "1",
                 "--out", str(tmp_path / "a" / "grid.png")]) == 0
    assert sorted(p.name for p in (tmp_path / "a" / "grid").iterdir()) == ["000_00.png", "captions.txt", "notes.md"]


def test_sample_class_labels(class_folder, tmp_path):
    assert main(["sample", str(class_folder), "--class-label", "1", "4", "--steps", "2", "--num-per-prompt", "1",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g" / "captions.txt").read_text() == "000 class 1\n001 class 4\n"


def test_sample_errors_are_one_line(text_folder, class_folder, tmp_path, capsys):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(text_folder, incomplete)
    shutil.rmtree(incomplete / "denoiser")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(text_folder, no_weights)
    (no_weights / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    bad_bytes = tmp_path / "bad.txt"
    bad_bytes.write_bytes(b"a red circle\n\xff\xfe\n")
    cases = [
        ([str(tmp_path / "missing"), "--prompt", "x"], "does not exist; pass a run folder or a pipeline folder"),
        ([str(tmp_path), "--prompt", "x"], "is neither a pipeline folder (model_index.json) nor a run folder"),
        ([str(incomplete), "--prompt", "x"], "is incomplete: model_index.json lists 'denoiser' but there is no"),
        ([str(no_weights), "--prompt", "x"], "Could not load the pipeline in"),
        ([str(class_folder), "--prompt", "x"], "holds a class-conditional model; pass --class-label K"),
        ([str(text_folder), "--class-label", "3"], "holds a text-conditioned model; pass --prompt TEXT"),
        ([str(class_folder), "--class-label", "10"], r"Class labels [10] are out of range; this model has classes 0"),
        ([str(text_folder), "--prompt", "x", "--scheduler", "nope"], "Unknown scheduler 'nope'; choose one of ddpm"),
        ([str(text_folder), "--prompt", "x", "--scheduler", "flow_euler"], "does not fit this diffusion"),
        ([str(text_folder), "--prompt", "  "], "Prompt 1 is empty"),
        ([str(text_folder)], "Nothing to sample: pass --prompt TEXT"),
        ([str(text_folder), "--prompts-file", str(tmp_path / "none.txt")], "Prompts file"),
        ([str(text_folder), "--prompts-file", str(bad_bytes)], "is not UTF-8 text"),
        ([str(text_folder), "--prompt", "x", "--steps", "0"], "--steps and --num-per-prompt must be at least 1"),
        ([str(text_folder), "--prompt", "x", "--out", str(tmp_path / "grid.gif")], "must end in .png or .jpg"),
        ([str(text_folder), "--prompt", "x", "--class-label", "1"], "holds a text-conditioned model; pass --prompt"),
        ([str(text_folder), "--prompt", "x", "--device", "gpu"], "--device 'gpu' is not a device; pass cpu, cuda"),
    ]
    if not torch.cuda.is_available():
        cases.append(([str(text_folder), "--prompt", "x", "--device", "cuda"], "this machine has no usable GPU"))
    for args, message in cases:
        assert main(["sample", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("film-diffusion sample: error: ") and message in err[0], (args, err)
    assert not (tmp_path / "samples.png").exists() and not (tmp_path / "grid.gif").exists()


def test_sample_uses_the_folders_steps_and_guidance_scale_unless_told_otherwise(tmp_path):
    """A folder saved with 3 steps and guidance 2 samples with them: no flags give the bytes of the flags spelled out,
    and other values give other bytes."""
    pipe = FilmDiffusionPipeline(class_denoiser(), DDIMScheduler(), num_inference_steps=3, guidance_scale=2.0)
    pipe.save_pretrained(tmp_path / "pipe")

    def grid(name: str, *flags: str) -> bytes:
        out = tmp_path / f"{name}.png"
        assert main(["sample", str(tmp_path / "pipe"), "--class-label", "1", "--num-per-prompt", "2", "--out",
                     str(out), *flags]) == 0
        return out.read_bytes()

    saved = grid("saved")
    assert saved == grid("spelled", "--steps", "3", "--guidance-scale", "2")
    assert saved != grid("other_guidance", "--guidance-scale", "4")
    assert saved != grid("other_steps", "--steps", "5")


def test_guidance_has_one_name_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "x", "--cfg", "2"])
    assert "unrecognized arguments: --cfg 2" in capsys.readouterr().err


def test_image_to_image_and_guidance_flags_sample_as_the_pipeline_does(text_folder, tmp_path, capsys):
    start = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    start.save(tmp_path / "start.png")
    out = tmp_path / "i2i.png"
    assert main(["sample", str(text_folder), "--prompt", "a red circle", "--num-per-prompt", "2", "--steps", "4",
                 "--image", str(tmp_path / "start.png"), "--strength", "0.5", "--guidance-interval", "0.5", "1",
                 "--guidance-rescale", "0.7", "--out", str(out)]) == 0
    pipe = FilmDiffusionPipeline.from_pretrained(text_folder)
    expected = pipe(prompt=["a red circle"], num_images_per_prompt=2, num_inference_steps=4, image=start, strength=0.5,
                    guidance_interval=(0.5, 1.0), guidance_rescale=0.7, output_type="np",
                    generator=torch.Generator("cpu").manual_seed(0)).images
    for c in range(2):
        got = np.asarray(Image.open(tmp_path / "i2i" / f"000_{c:02d}.png"))
        assert np.abs(got.astype(int) - np.round(expected[c] * 255).astype(int)).max() <= 1
    capsys.readouterr()
    (tmp_path / "notes.txt").write_text("not an image")
    for image, message in ((tmp_path / "missing.png", "does not exist"), (tmp_path / "notes.txt", "not a readable")):
        assert main(["sample", str(text_folder), "--prompt", "a", "--image", str(image), "--out",
                     str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["sample", str(text_folder), "--prompt", "a", "--strength", "0.5", "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "pass image=" in capsys.readouterr().err and not (tmp_path / "x.png").exists()

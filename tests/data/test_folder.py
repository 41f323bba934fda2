"""The image-folder dataset: Hugging Face metadata.jsonl convention, resize and crop, broken files
skipped and counted, and one clear error for a missing metadata file or image."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from film_diffusion.data import DATASETS, collate
from film_diffusion.data.folder import ImageFolderDataset
from film_diffusion.errors import UserError


def write_folder(root, rows, images):
    """``images``: file name -> PIL image or raw bytes; ``rows``: (file_name, text) pairs."""
    for name, content in images.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.save(path)
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": t}) + "\n" for f, t in rows))


def halves(width, height):
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_items_match_the_built_in_format(tmp_path):
    images = {"a.png": halves(40, 30), "sub/b.jpg": Image.new("RGB", (100, 300), (0, 255, 0)),
              "c.png": Image.new("L", (64, 64), 255)}  # fmt: skip
    write_folder(tmp_path, [("a.png", "red and blue"), ("sub/b.jpg", "green"), ("c.png", "white")], images)
    dataset = DATASETS["folder"](tmp_path, resolution=16)
    assert len(dataset) == 3 and dataset.skipped == []
    batch = collate([dataset[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 16, 16) and set(batch) == {"image", "caption"}
    assert batch["caption"] == ["red and blue", "green", "white"]
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert torch.allclose(batch["image"][1].mean((1, 2)), torch.tensor([-1.0, 1.0, -1.0]), atol=0.02)
    assert torch.allclose(batch["image"][2], torch.ones(3, 16, 16))  # grey-scale becomes RGB


def test_center_crop_keeps_the_middle_and_flip_mirrors(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # a white middle third between black sides
    write_folder(tmp_path, [("wide.png", "x")], {"wide.png": Image.fromarray(wide)})
    centred = ImageFolderDataset(tmp_path, resolution=20)[0]["image"]
    assert centred.min() > 0.9  # the crop is exactly the white middle
    write_folder(tmp_path, [("h.png", "x")], {"h.png": halves(32, 32)})
    flipped = ImageFolderDataset(tmp_path, resolution=32, random_flip=True)
    reds = {flipped[0]["image"][0, 0, 0].item() > 0 for _ in range(40)}
    assert reds == {True, False}  # red on the left sometimes, on the right other times
    cropped = ImageFolderDataset(tmp_path, resolution=32, center_crop=False)[0]["image"]
    assert cropped.shape == (3, 32, 32)


def test_broken_images_are_skipped_with_a_warning_and_a_count(tmp_path, caplog):
    good = Image.new("RGB", (8, 8), (10, 20, 30))
    png = tmp_path / "probe.png"
    good.save(png)
    truncated = png.read_bytes()[:30]
    write_folder(tmp_path, [("ok.png", "fine"), ("broken.png", "bad"), ("junk.jpg", "bad")],
                 {"ok.png": good, "broken.png": truncated, "junk.jpg": b"not an image at all"})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="film_diffusion.data.folder"):
        dataset = ImageFolderDataset(tmp_path, resolution=8)
        assert dataset.skipped == []  # nothing is decoded when the dataset is built
        first = [dataset[i]["caption"] for i in range(3)]
        again = [dataset[i]["image"] for i in range(3)]
    assert len(dataset) == 3 and first == ["fine", "fine", "fine"]  # a broken image's place: the next readable one
    assert all(torch.equal(image, again[0]) for image in again)
    assert [p.name for p in dataset.skipped] == ["broken.png", "junk.jpg"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # one warning per broken file, however often its index is read
    assert "broken.png" in messages[0] and "1 of 3 images skipped so far" in messages[0]
    assert "junk.jpg" in messages[1] and "2 of 3 images skipped so far" in messages[1]


def test_missing_metadata_or_file_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"No metadata.jsonl in .*; add one with a JSON object per line"):
        ImageFolderDataset(tmp_path, resolution=8)
    write_folder(tmp_path, [("there.png", "a"), ("gone.png", "b")], {"there.png": Image.new("RGB", (8, 8))})
    with pytest.raises(UserError, match="Line 2 of .* names gone.png, which is not in .*; add the file or remove"):
        ImageFolderDataset(tmp_path, resolution=8)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "there.png", "text": "a"}\n{"file": "there.png"}\n')
    with pytest.raises(UserError, match='Line 2 of .* is not a JSON object with "file_name" and "text"'):
        ImageFolderDataset(tmp_path, resolution=8)
    write_folder(tmp_path, [("junk.png", "a"), ("bad.png", "b")], {"junk.png": b"\x00" * 10, "bad.png": b"?"})
    with pytest.raises(UserError, match="No readable image is listed"):
        ImageFolderDataset(tmp_path, resolution=8)


def test_a_decompression_bomb_is_skipped_like_any_unreadable_image(tmp_path, monkeypatch, caplog):
    from PIL import Image as PILImage

    write_folder(tmp_path, [("big.png", "too big"), ("small.png", "fine")],
                 {"big.png": PILImage.new("RGB", (64, 64)), "small.png": PILImage.new("RGB", (8, 8))})
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is over twice that: PIL calls it a bomb
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(tmp_path, 8)
    assert dataset[0]["caption"] == "fine" and dataset.skipped == [tmp_path / "big.png"]
    assert "Skipping unreadable image" in caplog.text and "decompression bomb" in caplog.text.lower()

"""A folder of captioned images (config name ``folder``), in the Hugging Face image-folder convention:
images anywhere under ``root`` and a ``metadata.jsonl`` whose rows give ``file_name`` (relative to
``root``) and ``text``. Items match the built-in scenes' (``image`` in [-1, 1], ``caption``), without
ground truth.

Nothing is decoded when the dataset is built (a folder of a million images starts at once): each image is
decoded when it is first read, and a broken one is skipped then, with a warning naming it and the count so
far, its place taken by the next readable image of the list, so every index always gives the same item (runs
resume exactly and agree across processes). Every mode PIL reads (CMYK, 16-bit, palette, transparency,
animation) is converted to RGB as a viewer would show it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from film_diffusion.errors import UserError

logger = logging.getLogger(__name__)
METADATA = "metadata.jsonl"


class ImageFolderDataset(Dataset):
    """Images resized (shorter side) to ``resolution`` and cropped square: centred, or at random
    when ``center_crop`` is False; ``random_flip`` mirrors half of them left to right."""

    def __init__(self, root: str | Path, resolution: int, center_crop: bool = True, random_flip: bool = False):
        self.root = Path(root)
        self.samples = _read_metadata(self.root)
        self.skipped: list[Path] = []  # the broken files found so far (in this process)
        self.transform = self.make_transform(resolution, center_crop, random_flip)
        self[0]  # a folder with no readable image is refused now, not at the first batch

    @staticmethod
    def make_transform(resolution: int, center_crop: bool, random_flip: bool) -> transforms.Compose:
        """PIL image -> ``[3, resolution, resolution]`` in [-1, 1]: shorter side resized, square crop."""
        steps = [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
            transforms.CenterCrop(resolution) if center_crop else transforms.RandomCrop(resolution),
        ]
        if random_flip:
            steps.append(transforms.RandomHorizontalFlip())
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        """Item ``index``, or, where its image is broken, the next readable one after it (wrapping round)."""
        for offset in range(len(self.samples)):
            path, text = self.samples[(index + offset) % len(self.samples)]
            if path in self.skipped:
                continue
            try:
                image = decoded_rgb(path)
            except UNREADABLE as err:
                self.skipped.append(path)
                logger.warning("Skipping unreadable image %s (%s); %d of %d images skipped so far.", path, err,
                               len(self.skipped), len(self.samples))
                continue
            return {"image": self.transform(image), "caption": text}
        raise UserError(f"No readable image is listed in {self.root / METADATA}; add images or fix the files.")


UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises for a file or bytes it cannot read: missing, truncated, not an image, a decompression bomb."""


def decoded_rgb(source: str | Path | IO[bytes]) -> Image.Image:
    """The image decoded now (a truncated file fails here, not later), as RGB (:func:`to_rgb`); raises one of
    :data:`UNREADABLE`."""
    with Image.open(source) as image:
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode PIL reads, as 8-bit RGB: 16- and 32-bit grey scaled to 8 bits (PIL would clip them to white),
    transparency composited over white (PIL would drop it and show what lies under it), the rest converted.
    An animated file gives its first frame."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        wide = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and wide.max() <= 65535 else max(float(wide.max()), 1.0)
        return Image.fromarray(np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _read_metadata(root: Path) -> list[tuple[Path, str]]:
    """(image path, caption) per row of ``metadata.jsonl``; any problem in it is one clear error."""
    metadata = root / METADATA
    if not metadata.is_file():
        raise UserError(
            f"No {METADATA} in {root}; add one with a JSON object per line, "
            f'e.g. {{"file_name": "0001.png", "text": "a red circle"}}.'
        )
    rows = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            path, text = root / row["file_name"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f'Line {number} of {metadata} is not a JSON object with "file_name" and "text"; fix that line.'
            ) from None
        if not path.is_file():
            raise UserError(f"Line {number} of {metadata} names {row['file_name']}, which is not in {root}; "
                            "add the file or remove the line.")  # fmt: skip
        rows.append((path, str(text)))
    return rows

"""The oracle: a small CNN that reads a built-in scene back from its pixels (for each grid cell,
whether an object is there and its colour, shape and size), so generated images can be scored
exactly against the ground truth they were asked to show.

Weights are read and written only as safetensors; :mod:`.oracle_weights` finds the ones for a resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from film_diffusion.data.render import VERSION as RENDER_VERSION
from film_diffusion.data.vocabulary import CELLS, COLORS, GRID, SHAPES, SIZES
from film_diffusion.errors import UserError
from film_diffusion.evaluation.metrics import frechet_distance

BODY_SIZE = 16  # every input is folded (pixel-unshuffled) to this size, losslessly, before the convolutions
HEADS = {"occupied": 1, "color": len(COLORS), "shape": len(SHAPES), "size": len(SIZES)}  # logits per cell
ATTRIBUTES = {"color": COLORS, "shape": SHAPES, "size": SIZES}


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ShapesOracle(nn.Module):
    """Scene reader for one resolution: pixel-unshuffle to 16x16, five 3x3 convolutions, average-pool
    to the 3x3 grid, and a per-cell head (shared by the nine cells) for occupancy and attributes."""

    def __init__(self, resolution: int, width: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.resolution, self.width, self.hidden = resolution, width, hidden
        self.fold = max(1, round(resolution / BODY_SIZE))
        self.body = nn.Sequential(
            _conv(3 * self.fold**2, width),
            _conv(width, width),
            _conv(width, 2 * width, stride=2),
            _conv(2 * width, 2 * width),
            _conv(2 * width, 2 * width),
        )
        self.cell_features = nn.Sequential(nn.Conv2d(2 * width, hidden, 1), nn.ReLU())
        self.cell_logits = nn.Conv2d(hidden, sum(HEADS.values()), 1)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        size = self.fold * BODY_SIZE
        if images.shape[-1] != size:  # resolutions that are not a multiple of 16
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        x = self.body(F.pixel_unshuffle(images, self.fold))  # (B, 2W, 8, 8)
        return self.cell_features(F.adaptive_avg_pool2d(x, GRID))  # (B, hidden, 3, 3)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per cell, by head: ``occupied`` (B, 9), the attributes (B, 9, classes)."""
        logits = self.cell_logits(self._features(images)).flatten(2).transpose(1, 2)  # (B, 9, 15)
        parts = dict(zip(HEADS, logits.split(list(HEADS.values()), dim=-1), strict=True))
        parts["occupied"] = parts["occupied"].squeeze(-1)
        return parts

    @torch.inference_mode()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Penultimate features ``(B, 9 * hidden)``, cell by cell: the space an in-domain FID lives in."""
        return torch.cat([self._features(chunk).flatten(1) for chunk in self._chunks(images, batch_size)])

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Per-cell decisions: ``occupied`` (B, 9) bool, ``color``/``shape``/``size`` (B, 9) class ids."""
        outputs = [self(chunk) for chunk in self._chunks(images, batch_size)]
        logits = {k: torch.cat([o[k] for o in outputs]) for k in HEADS}
        decided = {k: logits[k].argmax(-1) for k in ATTRIBUTES}
        return {"occupied": logits["occupied"] > 0, **decided}

    def read_objects(self, images: torch.Tensor) -> list[list[dict]]:
        """The objects the oracle sees in each image, in cell order, in the dataset's vocabulary."""
        pred = self.predict(images)
        return [
            [
                {**{k: names[pred[k][b, c]] for k, names in ATTRIBUTES.items()}, "cell": CELLS[c]}
                for c in range(len(CELLS))
                if pred["occupied"][b, c]
            ]
            for b in range(len(images))
        ]

    def score(self, images: torch.Tensor, objects_list: Sequence[Sequence[dict]]) -> dict[str, float]:
        """Accuracies in [0, 1] of ``images`` against the objects each should show.

        count, position: per image, the number of objects (cells seen occupied) / the set of occupied
        cells is exactly right.
        color, shape, size: per object, an object is seen in its cell and has that attribute right.
        all: per image, every one of the above is right.
        """
        if len(images) != len(objects_list):
            raise UserError(f"Got {len(images)} images but {len(objects_list)} object lists; pass one per image.")
        pred = self.predict(images)  # (B, 9) each
        truth = torch.stack([encode_objects(objects) for objects in objects_list]).to(pred["occupied"].device)
        present = truth[..., 0] == 1
        seen = pred["occupied"] & present
        right = {k: seen & (pred[k] == truth[..., i + 1]) for i, k in enumerate(ATTRIBUTES)}
        position = (pred["occupied"] == present).all(1)
        count = pred["occupied"].sum(1) == present.sum(1)
        every_object = (~present | (right["color"] & right["shape"] & right["size"])).all(1)
        return {
            "count": count.float().mean().item(),
            **{k: (r.sum() / present.sum()).item() for k, r in right.items()},  # NaN when there is no object
            "position": position.float().mean().item(),
            "all": (count & position & every_object).float().mean().item(),
        }

    def fid(self, real_images: torch.Tensor, fake_images: torch.Tensor) -> float:
        """Frechet distance between the oracle features of two image sets (in-domain FID)."""
        return frechet_distance(self.features(real_images), self.features(fake_images))

    def _chunks(self, images: torch.Tensor, batch_size: int):
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.resolution, self.resolution):
            raise UserError(
                f"The oracle reads [B, 3, {self.resolution}, {self.resolution}] images in [-1, 1], got "
                f"{list(images.shape)}; resize them or use load_oracle({images.shape[-1]})."
            )
        self.eval()
        device = next(self.parameters()).device
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size].to(device, torch.float32)

    def save(self, path: str | Path) -> None:
        """Write the weights and the constructor arguments (as metadata) to one safetensors file."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        metadata = {"resolution": str(self.resolution), "width": str(self.width), "hidden": str(self.hidden),
                    "render_version": RENDER_VERSION}  # fmt: skip
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata=metadata)

    @classmethod
    def from_file(cls, path: str | Path) -> ShapesOracle:
        meta = weights_metadata(path)
        oracle = cls(int(meta["resolution"]), width=int(meta["width"]), hidden=int(meta["hidden"]))
        oracle.load_state_dict(load_file(str(path)))
        return oracle.eval()


def encode_objects(objects: Sequence[dict]) -> torch.Tensor:
    """Ground truth as ``(9, 4)`` longs per cell: occupied, colour id, shape id, size id (-1 where empty)."""
    table = torch.full((len(CELLS), 4), -1, dtype=torch.long)
    table[:, 0] = 0
    for obj in objects:
        table[CELLS.index(obj["cell"])] = torch.tensor(
            [1, COLORS.index(obj["color"]), SHAPES.index(obj["shape"]), SIZES.index(obj["size"])]
        )
    return table


def weights_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}

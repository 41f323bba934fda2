"""Batching items of either dataset: images stack, captions and ground truths stay lists (a scene's
object list has its own length, which torch's default collate cannot batch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def collate(items: Sequence[dict]) -> dict:
    """``{"image": [B, 3, H, W], "caption": [str] * B}`` plus ``"objects"`` and ``"label"`` (``[B]``) when
    the items carry them."""
    batch = {"image": torch.stack([it["image"] for it in items]), "caption": [it["caption"] for it in items]}
    if "objects" in items[0]:
        batch["objects"] = [it["objects"] for it in items]
    if "label" in items[0]:
        batch["label"] = torch.tensor([it["label"] for it in items])
    return batch

"""Batching items of any of our datasets: tensors stack, integers become a tensor, everything else
(captions, a scene's object list, which has its own length) stays a list."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def collate(items: Sequence[dict]) -> dict:
    """``{"image": [B, 3, H, W], "caption": [str] * B}``, plus ``"objects"`` (lists), ``"label"`` (``[B]``)
    or stored latents, whichever the items carry."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], int) and not isinstance(values[0], bool):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch

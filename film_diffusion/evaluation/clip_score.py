"""CLIP score (Hessel et al., 2021): how well images match their captions in a CLIP's joint space,
``100 * max(cos(image, caption), 0)`` averaged, as torchmetrics and the text-to-image papers report it.

Scored with the built-in CLIP (trained on the built-in scenes, shipped in the package), so the figure
needs no download and is the same for every model, whichever text encoder the model itself was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
import torch.nn.functional as F

from film_diffusion.encoders.builtin import builtin_clip
from film_diffusion.encoders.clip_openclip import OpenCLIP


@cache
def scoring_clip() -> OpenCLIP:
    """The built-in CLIP, loaded once per process."""
    return builtin_clip().eval()


@torch.no_grad()
def clip_score(images: torch.Tensor, captions: Sequence[str], clip: OpenCLIP | None = None,
               batch_size: int = 128) -> float:
    """Mean CLIP score of ``images`` ``[N, 3, H, W]`` in [-1, 1] against their ``captions`` (one each)."""
    if len(images) != len(captions) or not len(captions):
        raise ValueError(f"clip_score needs one caption per image, got {len(images)} images and {len(captions)} "
                         "captions.")
    clip = clip or scoring_clip()
    scores = []
    for start in range(0, len(captions), batch_size):
        image = clip.encode_images(images[start:start + batch_size])
        text = F.normalize(clip.encode(list(captions[start:start + batch_size])).pooled.float(), dim=-1)
        scores.append(100 * (image.float() * text.to(image.device)).sum(-1).clamp(min=0))
    return torch.cat(scores).mean().item()

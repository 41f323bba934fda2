"""Representation alignment (REPA; Yu et al. 2024, arXiv 2410.06940): one block's features of the noisy input,
projected by a small MLP, are pulled toward a frozen image encoder's patch features of the clean image, as a second
loss term beside the diffusion loss. The paper reports DiT/SiT training 17.5x faster with DINOv2 as the encoder;
here the encoder is the built-in CLIP's image tower, trained on this domain's scenes.

The projector is trained with the denoiser (in the optimizer, in checkpoints) and thrown away at the end: the
pipeline holds the denoiser only, as in the paper.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from film_diffusion.conditioning import Site
from film_diffusion.config import ConfigError
from film_diffusion.encoders.builtin import builtin_clip


class BlockTap:
    """Keeps the output of one block of the denoiser while ``active``, and only then (not when sampling)."""

    def __init__(self, block: nn.Module):
        self.features: torch.Tensor | None = None
        self._on = False
        block.register_forward_hook(self._keep)

    def _keep(self, _block: nn.Module, _args: object, output: torch.Tensor | tuple) -> None:
        if self._on:
            self.features = output[0] if isinstance(output, tuple) else output  # a DiT block returns (x, stream)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self._on, self.features = True, None
        try:
            yield
        finally:
            self._on = False

    def take(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("The aligned block did not run in this forward pass.")
        return features


class Alignment(nn.Module):
    """REPA's projector (three linear layers with SiLU, as the paper's) and its loss, ``1 - cosine similarity``
    averaged over the encoder's patch grid (the paper's negative similarity plus one: the same gradient, and 0 at a
    perfect match)."""

    def __init__(self, site: Site, num_image_tokens: int | None, target_dim: int, hidden: int):
        super().__init__()
        self.layout, self.num_image_tokens = site.layout, num_image_tokens
        self.projector = nn.Sequential(nn.Linear(site.channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                       nn.SiLU(), nn.Linear(hidden, target_dim))

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``features``: the block's output, ``(B, C, H, W)`` or ``(B, N, C)`` (image tokens first); ``targets``:
        ``(B, D, h, w)``. The features are averaged down to the targets' grid, then projected."""
        if self.layout == "tokens":
            tokens = features[:, : self.num_image_tokens]  # in-context caption tokens follow the image's
            side = int(round(tokens.shape[1] ** 0.5))
            features = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
        pooled = F.adaptive_avg_pool2d(features.float(), targets.shape[-2:])  # (B, C, h, w)
        projected = self.projector(pooled.flatten(2).transpose(1, 2))  # (B, h*w, D)
        return 1 - F.cosine_similarity(projected, targets.flatten(2).transpose(1, 2).float(), dim=-1).mean()


def aligned_block(denoiser: nn.Module, name: str | None) -> tuple[str, nn.Module, Site]:
    """The block REPA aligns (``name``, or by default an early one: the DiT's block at a third of its depth, as
    the paper's 8 of 28; the U-Net's first block below full resolution), and its output site."""
    blocks = {module_name: module for module_name, module in denoiser.named_modules() if hasattr(module, "site_out")}
    if name is None:
        names = list(blocks)
        below_full = [n for n in names if n.startswith("down.") and not n.startswith("down.0.")]
        name = below_full[0] if below_full else names[max(0, len(names) // 3 - 1)]
    if name not in blocks:
        raise ConfigError(f"Config key 'train.repa_block' is {name!r}, which names no block of this model; choose "
                          f"one of {', '.join(blocks)}.")
    block = blocks[name]
    return name, block, next(site for site in block.sites if site.name == block.site_out)


PROJECTOR_WIDTH = 256


class RepresentationAlignment:
    """What a run holds for REPA: the tap on the aligned block, the projector (``alignment``, a module the trainer
    optimises and checkpoints beside the denoiser) and the frozen encoder, the built-in CLIP's image tower."""

    def __init__(self, denoiser: nn.Module, block_name: str | None, device: torch.device):
        self.block_name, block, site = aligned_block(denoiser, block_name)
        self.tap = BlockTap(block)
        self.encoder = builtin_clip().to(device)
        probe = self.encoder.encode_image_patches(torch.zeros(1, 3, 32, 32, device=device))
        cfg = denoiser.config
        tokens = (cfg.sample_size // cfg.patch_size) ** 2 if site.layout == "tokens" else None
        self.alignment = Alignment(site, tokens, probe.shape[1], PROJECTOR_WIDTH).to(device)

    def loss(self, clean_images: torch.Tensor) -> torch.Tensor:
        """The alignment loss of the block output the tap kept, against the encoder's features of the clean
        images (pixels in [-1, 1])."""
        return self.alignment(self.tap.take(), self.encoder.encode_image_patches(clean_images))

"""The DiT's token mixers: self-attention, or FFNet's FFNified attention (Yun et al., "MetaMixer Is All
You Need", arXiv:2406.02021).

FFNification keeps attention's query-key-value structure and builds it from an FFN's parts: a pointwise
projection makes the query, a large-kernel depthwise convolution plays the query-key interaction, GELU
replaces softmax, a second depthwise convolution plays the coefficient-value interaction, and a
pointwise projection maps back. Its cost is linear in the number of tokens.

Departures from the paper, each for a denoiser: no BatchNorm (its batch statistics would mix noise
levels; the query is layer-normed per token instead, and the DiT's own norms stay the conditioning
sites); an output projection, as attention has; in-context tokens (the ``concat`` method) have no place
on the grid, so their queries' mean (over real tokens) is added to every grid position before the
convolutions, and they themselves change only through the channel mixer (the DiT's MLP).

In training each depthwise convolution runs a parallel 3x3 branch beside the k x k one, as FFNet's
RepVGGDW does; :meth:`FFNifiedMixer.fuse` folds that branch (and the layer-scale) into single
convolutions and projections for sampling: the same function, fewer operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from film_diffusion.errors import UserError
from film_diffusion.layers import SelfAttention

TOKEN_MIXERS = ("attention", "ffnified")
SMALL_KERNEL = 3
LOW_PRECISION = (torch.bfloat16, torch.float16)


class RepDepthwiseConv(nn.Module):
    """A depthwise k x k convolution with a parallel 3x3 one while training (FFNet's RepVGGDW without
    BatchNorm); ``fuse`` pads the 3x3 kernel to k x k and adds it in.

    Two speed-ups, each the same function: the branches run as one convolution whose kernel is the k x k one
    plus the padded 3x3 one (a convolution is linear in its kernel, so the gradients reaching both kernels are
    the same too); and under bf16/fp16 autocast on the CPU the convolution runs in float32 on the rounded
    inputs, its output rounded back: the CPU's depthwise kernels take longer in bf16 than in float32 (the
    backward's weight and bias gradients most), and float32 is at least as accurate.
    """

    def __init__(self, channels: int, kernel_size: int, fused: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        parallel = kernel_size > SMALL_KERNEL and not fused
        self.small = nn.Conv2d(channels, channels, SMALL_KERNEL, padding=SMALL_KERNEL // 2, groups=channels,
                               bias=False) if parallel else None

    def kernel(self) -> torch.Tensor:
        """The k x k kernel with the 3x3 branch folded in."""
        if self.small is None:
            return self.conv.weight
        pad = (self.conv.kernel_size[0] - SMALL_KERNEL) // 2
        return self.conv.weight + F.pad(self.small.weight, [pad] * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        low = _cpu_low_precision(x)
        if low is None:
            return F.conv2d(x, self.kernel(), conv.bias, padding=conv.padding, groups=conv.groups)
        with torch.autocast("cpu", enabled=False):
            out = F.conv2d(x.to(low).float(), self.kernel().to(low).float(), conv.bias.to(low).float(),
                           padding=conv.padding, groups=conv.groups)
        return out.to(low)

    @torch.no_grad()
    def fuse(self) -> None:
        if self.small is None:
            return
        self.conv.weight.copy_(self.kernel())
        self.small = None


def _cpu_low_precision(x: torch.Tensor) -> torch.dtype | None:
    """The bf16 / fp16 a CPU convolution of ``x`` would compute in (autocast's, or the input's), else None."""
    if x.device.type != "cpu":
        return None
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in LOW_PRECISION:
        return torch.get_autocast_dtype("cpu")
    return x.dtype if x.dtype in LOW_PRECISION else None


class FFNifiedMixer(nn.Module):
    """Query projection and norm, depthwise k x k, GELU, depthwise k x k, output projection, scaled by a
    learned per-channel layer-scale; reads and returns ``(B, T, C)`` tokens whose first ``grid**2`` lie on
    the ``grid x grid`` patch grid (row-major, as the DiT's patch embedding lays them)."""

    def __init__(self, dim: int, grid: int, kernel_size: int = 7, layer_scale_init: float = 1e-5,
                 fused: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserError(f"mixer_kernel_size={kernel_size} must be odd and positive (a centred kernel); "
                            "use 7, as FFNet does, or 3, 5, 9...")
        self.grid = grid
        self.query = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.key_conv = RepDepthwiseConv(dim, kernel_size, fused)
        self.value_conv = RepDepthwiseConv(dim, kernel_size, fused)
        self.proj = nn.Linear(dim, dim)
        self.layer_scale = None if fused else nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        cells = self.grid * self.grid
        q = self.norm(self.query(x))
        grid_q = q[:, :cells]
        if length > cells:  # in-context tokens: their mean query reaches every cell
            extra = q[:, cells:]
            weight = (torch.ones(extra.shape[:2], device=x.device) if key_mask is None
                      else key_mask[:, cells:].float()).to(q.dtype)
            pooled = (extra * weight[..., None]).sum(1) / weight.sum(1, keepdim=True).clamp(min=1)
            grid_q = grid_q + pooled[:, None]
        # (B, T, C) -> a channels-last (B, C, H, W) view: no copy, and the layout the CPU's convolutions like
        h = grid_q.reshape(batch, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        h = self.value_conv(F.gelu(self.key_conv(h)))
        out = self.proj(h.permute(0, 2, 3, 1).reshape(batch, cells, dim))
        if self.layer_scale is not None:
            out = out * self.layer_scale.to(out.dtype)
        return out if length == cells else torch.cat([out, out.new_zeros(batch, length - cells, dim)], dim=1)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the parallel 3x3 branches into the k x k kernels and the layer-scale into the output
        projection."""
        self.key_conv.fuse()
        self.value_conv.fuse()
        if self.layer_scale is not None:
            self.proj.weight *= self.layer_scale[:, None]
            self.proj.bias *= self.layer_scale
            self.layer_scale = None


def make_token_mixer(kind: str, dim: int, num_heads: int, grid: int, kernel_size: int, fused: bool) -> nn.Module:
    """``attention`` (the DiT's self-attention) or ``ffnified``; both take ``(tokens, key_mask)``."""
    if kind == "attention":
        return SelfAttention(dim, num_heads)
    if kind == "ffnified":
        return FFNifiedMixer(dim, grid, kernel_size, fused=fused)
    raise UserError(f"Unknown token_mixer {kind!r}; choose one of {', '.join(TOKEN_MIXERS)}.")

"""One generator head that emits parameters for many sites in a single matrix product."""

from __future__ import annotations

import torch
from torch import nn

from film_diffusion.layers import zero_module


class SiteParameterGenerator(nn.Module):
    """``SiLU(v)`` -> (``depth`` hidden layers) -> one Linear whose output is split among all sites.

    Emitting every site's parameters at once is what makes FiLM and adaLN-Zero cheap: one GEMM per
    forward pass instead of one small one per block. ``zero_init`` zeroes the last layer, so every
    emitted parameter starts at exactly 0.

    Under autocast the head runs in its weights' dtype (float32) with autocast off: it multiplies a
    handful of rows (one per sample) by a weight as large as a whole block's, so a low-precision copy of
    that weight, and of its gradient, would cost more memory traffic than the product saves. Its outputs
    are cast to the features' dtype where they are applied (``SiteState``). A model whose weights are
    bf16 or fp16 runs the head in that dtype.
    """

    def __init__(self, in_dim: int, sizes: list[int], depth: int = 0, hidden_dim: int | None = None,
                 zero_init: bool = True):
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        layers: list[nn.Module] = [nn.SiLU()]
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden_dim), nn.SiLU()]
            width = hidden_dim
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, sum(sizes))  # its weight is as large as a block's
        self.sizes = list(sizes)
        if zero_init:
            zero_module(self.out)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast(v.device.type, enabled=False):
            params = self.out(self.hidden(v.to(self.out.weight.dtype)))
        return torch.split(params, self.sizes, dim=-1)

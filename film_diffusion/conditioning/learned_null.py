"""A learned null condition: tokens and a pooled vector trained as the model's "no caption" input,
as PixArt-alpha's caption embedder learns ``y_embedding`` for classifier-free guidance."""

from __future__ import annotations

import torch
from torch import nn

from film_diffusion.conditioning.condition import Condition


class LearnedNull(nn.Module):
    """``num_tokens`` tokens of width ``token_dim`` (all real: the mask is all True) and a pooled vector of
    width ``pooled_dim``; either width may be None where the model reads no such input. Initialised as
    PixArt's, ``randn / sqrt(width)``, so the null starts at the scale of an encoder's output."""

    def __init__(self, num_tokens: int, token_dim: int | None, pooled_dim: int | None):
        super().__init__()
        self.tokens = None if token_dim is None else nn.Parameter(torch.randn(num_tokens, token_dim) / token_dim**0.5)
        self.pooled = None if pooled_dim is None else nn.Parameter(torch.randn(pooled_dim) / pooled_dim**0.5)

    def forward(self, batch_size: int) -> Condition:
        tokens = None if self.tokens is None else self.tokens.expand(batch_size, -1, -1)  # (B, L, Dt)
        mask = None if tokens is None else torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        pooled = None if self.pooled is None else self.pooled.expand(batch_size, -1)        # (B, Dp)
        return Condition(tokens=tokens, mask=mask, pooled=pooled)

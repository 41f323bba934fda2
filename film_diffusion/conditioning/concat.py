"""Concatenation: the condition joins the denoiser's input.

On a token backbone (a ``sequence`` site) the condition tokens, the pooled vector and, with
``timestep_route="with_condition"``, the timestep are projected and appended as in-context tokens
(U-ViT, Bao et al. 2023; DiT's in-context variant); the backbone drops them before its output
layer. On a convolutional backbone (an ``input`` site) the pooled vector is projected to extra
input channels, broadcast over the image (and the timestep to channels of its own).
"""

from __future__ import annotations

import torch
from torch import nn

from film_diffusion.conditioning.base import ConditioningMethod, Wiring
from film_diffusion.conditioning.sites import Signals, Site, SiteState
from film_diffusion.errors import UserError
from film_diffusion.layers import zero_module


class Concat(ConditioningMethod):
    """Options:
        channels:  extra input channels per source on an ``input`` site (default 4).
        zero_init: zero the projections (default False, as in U-ViT), so the concatenated part starts at 0.
    """

    name = "concat"

    def __init__(self, wiring: Wiring, channels: int = 4, zero_init: bool = False):
        super().__init__(wiring)
        self.site = self.require_sites(wiring.sites_of("sequence") or wiring.sites_of("input"), "sequence or input")[0]
        on_tokens = self.site.kind == "sequence"
        width = self.site.channels if on_tokens else channels
        self.channels = channels
        use_tokens = wiring.use_condition and on_tokens and wiring.token_dim is not None
        use_pooled = wiring.use_condition and wiring.has_pooled
        if wiring.use_condition and not (use_tokens or use_pooled):
            if on_tokens:
                raise UserError("Conditioning method 'concat' needs condition tokens or a pooled condition: set "
                                "cond_token_dim and/or cond_pooled_dim (or num_classes).")
            self.require_pooled(wiring)
        self.token_proj = nn.Linear(wiring.token_dim, width) if use_tokens else None
        self.pooled_proj = nn.Linear(wiring.embed_dim, width) if use_pooled else None
        self.reads_pooled = use_pooled
        self.reads_tokens = use_tokens
        self.time_proj = nn.Linear(wiring.embed_dim, width) if wiring.use_timestep else None
        if zero_init:
            for proj in (self.token_proj, self.pooled_proj, self.time_proj):
                if proj is not None:
                    zero_module(proj)

    def extra_input_channels(self, site: Site) -> int:
        if site != self.site or site.kind != "input":
            return 0
        return self.channels * ((self.pooled_proj is not None) + (self.time_proj is not None))

    def register(self, signals: Signals, state: SiteState) -> None:
        vectors = []
        if self.pooled_proj is not None:  # signals.pooled is set: see ConditioningMethod.drive_vector
            vectors.append(self.pooled_proj(signals.pooled))
        if self.time_proj is not None:
            vectors.append(self.time_proj(signals.t_emb))
        if self.site.kind == "input":
            state.add_channels(self.site, torch.cat(vectors, dim=-1))
            return
        if self.token_proj is not None:
            if signals.tokens is None:
                raise ValueError("Conditioning method 'concat' needs condition tokens, but the call gave none: "
                                 "pass condition.tokens.")
            tokens = signals.tokens.to(self.token_proj.weight.dtype)
            state.add_tokens(self.site, self.token_proj(tokens), signals.mask)
        if vectors:
            state.add_tokens(self.site, torch.stack(vectors, dim=1))

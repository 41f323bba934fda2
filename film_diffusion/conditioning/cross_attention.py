"""Cross-attention from the features to the condition tokens (Rombach et al., 2022; PixArt-alpha, 2023).

Every ``context`` site gets its own query and output projection; the keys and values of all sites
are projected from the condition tokens in one matrix product per forward pass. Padded tokens are
masked out, and a sample with no real token gets a zero update. With ``timestep_route="with_condition"``
the timestep embedding becomes one more key/value token. A model without condition tokens (class labels)
attends to its embedded pooled condition as a single token: with the timestep on the same route, the DiT
paper's cross-attention block, which attends to the length-two sequence of the timestep and class embeddings.

With ``gate`` the update is multiplied by ``tanh(alpha)``, ``alpha`` a learned scalar per site (``"layer"``) or
per head (``"head"``) that starts at 0, as Flamingo's and Lumina-Next's gated cross-attention: the model starts
by ignoring the caption, whatever the other weights. The gate multiplies each head's attention output before
the output projection (which then has no bias, so a zero gate gives a zero update), and the projection is not
zeroed: a zero gate times a zero projection would give neither a gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from film_diffusion.conditioning.base import ConditioningMethod, Wiring
from film_diffusion.conditioning.sites import Signals, SiteState
from film_diffusion.errors import UserError
from film_diffusion.layers import attention, zero_module


class CrossAttention(ConditioningMethod):
    """Options:
        num_heads: attention heads at every site (default: the backbone's head count there).
        zero_init: zero the output projections so that every cross-attention starts as the identity (default:
                   True without a gate, as PixArt-alpha does; a gate makes it the identity instead).
        gate:      ``"layer"`` or ``"head"``: a ``tanh`` gate per site or per head, zero at init (default None).
    """

    name = "cross_attention"

    def __init__(self, wiring: Wiring, num_heads: int | None = None, zero_init: bool | None = None,
                 gate: Literal["layer", "head"] | None = None):
        super().__init__(wiring)
        if gate not in (None, "layer", "head"):
            raise UserError(f"cross_attention option gate={gate!r} is unknown; use 'layer', 'head' or leave it unset.")
        if gate is not None and zero_init:
            raise UserError("cross_attention with a gate cannot also zero its output projections: a zero gate times a "
                            "zero projection gets no gradient, so neither would learn; drop zero_init.")
        zero_init = gate is None if zero_init is None else zero_init
        self.pooled_token = wiring.use_condition and wiring.token_dim is None and wiring.has_pooled
        if self.pooled_token:
            self.require_pooled(wiring)
        else:
            self.require_tokens(wiring)
        self.sites = self.require_sites(wiring.sites_of("context"), "context (attention)")
        self.heads = [num_heads or site.num_heads or 1 for site in self.sites]
        for site, heads in zip(self.sites, self.heads, strict=True):
            if site.channels % heads:
                raise UserError(f"cross_attention num_heads={heads} does not divide the width {site.channels} of "
                                f"site '{site.name}'; choose a num_heads that divides every attention width.")
        token_dim = wiring.token_dim if wiring.use_condition and not self.pooled_token else wiring.embed_dim
        self.time_token = nn.Linear(wiring.embed_dim, token_dim) if wiring.use_timestep else None
        self.kv_sizes = [2 * s.channels for s in self.sites]
        self.to_kv = nn.Linear(token_dim, sum(self.kv_sizes), bias=False)  # all sites' keys and values at once
        self.norms = nn.ModuleList(nn.LayerNorm(s.channels) for s in self.sites)
        self.to_q = nn.ModuleList(nn.Linear(s.channels, s.channels, bias=False) for s in self.sites)
        self.to_out = nn.ModuleList(nn.Linear(s.channels, s.channels, bias=gate is None) for s in self.sites)
        self.gates = None if gate is None else nn.ParameterList(
            nn.Parameter(torch.zeros(heads if gate == "head" else 1)) for heads in self.heads)
        if zero_init:
            for proj in self.to_out:
                zero_module(proj)

    def context(self, signals: Signals) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The key/value tokens ``(B, L, D)`` and their mask (None when every token is real)."""
        tokens, mask = [], []
        if self.pooled_token:
            tokens.append(signals.pooled[:, None])  # (B, 1, E)
            mask.append(None)
        elif self.use_condition:
            if signals.tokens is None:
                raise ValueError("Conditioning method 'cross_attention' needs condition tokens, but the call gave "
                                 "none: pass condition.tokens (a text encoder's output).")
            tokens.append(signals.tokens)
            mask.append(signals.mask)
        if self.time_token is not None:
            tokens.append(self.time_token(signals.t_emb)[:, None])  # (B, 1, D)
            mask.append(None)
        if all(m is None for m in mask):
            return torch.cat(tokens, dim=1), None
        full = [torch.ones(t.shape[:2], dtype=torch.bool, device=t.device) if m is None else m
                for t, m in zip(tokens, mask, strict=True)]
        return torch.cat(tokens, dim=1), torch.cat(full, dim=1)

    def register(self, signals: Signals, state: SiteState) -> None:
        tokens, mask = self.context(signals)
        kv = torch.split(self.to_kv(tokens.to(self.to_kv.weight.dtype)), self.kv_sizes, dim=-1)
        # A sample with no real token has nothing to read: its update is zero at every site.
        has_tokens = None if mask is None else mask.any(dim=-1)[:, None, None]  # (B, 1, 1)
        for index, site in enumerate(self.sites):
            k, v = kv[index].chunk(2, dim=-1)
            state.add_residual(site, lambda x, i=index, k=k, v=v: self.attend(i, x, k, v, mask, has_tokens))

    def attend(self, index: int, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               has_tokens: torch.Tensor | None) -> torch.Tensor:
        q = self.to_q[index](self.norms[index](x))
        read = attention(q, k.to(q.dtype), v.to(q.dtype), self.heads[index], mask)  # (B, N, C), heads side by side
        if self.gates is not None:
            gate = self.gates[index].tanh().to(read.dtype)
            read = (read.unflatten(-1, (gate.shape[0], -1)) * gate[:, None]).flatten(-2)
        update = self.to_out[index](read)
        return update if has_tokens is None else update * has_tokens.to(update.dtype)  # (B, N, C)

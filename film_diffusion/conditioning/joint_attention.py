"""Joint attention: MMDiT (Esser et al., 2024, "Scaling Rectified Flow Transformers", arXiv:2403.03206; Flux's
double-stream blocks).

The caption tokens get a stream of their own that runs beside the image tokens through every block: its own
norms, QKV and output projections and MLP, modulated adaLN-Zero style by the timestep embedding plus the pooled
condition when the model has one (SD3 modulates both streams by that sum; here the image stream is modulated by
whatever modulates it, so SD3 exactly is ``[adaln_zero, joint_attention]``: adaLN-Zero then reads the timestep
and the pooled vector for the image stream). In each block one
attention runs over the image's and the caption's tokens together, so each reads the other. Padded caption
tokens are masked as keys. In the last block the caption stream gives keys and values only (SD3's
``context_pre_only``): nothing after it would read its update, and the stream is dropped before the final
layer. With ``timestep_route="with_condition"`` the timestep joins the stream as one more token.

It acts at ``joint`` sites (a block's self-attention), so it needs a backbone whose blocks attend over their
tokens, all of one width: the DiT with attention. A model without condition tokens (class labels) streams its
embedded pooled condition as a single token.
"""

from __future__ import annotations

import torch
from torch import nn

from film_diffusion.conditioning.base import ConditioningMethod, Wiring
from film_diffusion.conditioning.generator import SiteParameterGenerator
from film_diffusion.conditioning.sites import Signals, SiteState
from film_diffusion.errors import UserError
from film_diffusion.layers import Mlp


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` per token, in the stream's dtype (the generator emits float32)."""
    return torch.addcmul(shift[:, None].to(x.dtype), x, 1 + scale[:, None].to(x.dtype))


class JointBlockStream(nn.Module):
    """The caption stream's half of one MMDiT block; ``last`` keeps only the norm and the key/value projection."""

    def __init__(self, width: int, mlp_ratio: float, last: bool):
        super().__init__()
        self.last = last
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, (2 if last else 3) * width)
        if not last:
            self.proj = nn.Linear(width, width)
            self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(width, int(width * mlp_ratio))

    @property
    def modulation_size(self) -> int:
        """Channels of modulation this block reads: shift and scale (last), or (shift, scale, gate) twice."""
        return self.norm1.normalized_shape[0] * (2 if self.last else 6)

    def forward(self, attn: nn.Module, h: torch.Tensor, stream: torch.Tensor, mask: torch.Tensor | None,
                modulation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``mask``: the ``(B, N + L)`` key mask over the block's tokens and the stream's, or None."""
        if self.last:
            shift1, scale1 = modulation.chunk(2, dim=-1)
        else:
            shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)
        own = self.qkv(_modulate(self.norm1(stream), shift1, scale1))
        mixed, stream_out = attn.forward_joint(h, own, mask)
        if self.last:
            return mixed, None
        stream = stream + gate1[:, None].to(stream.dtype) * self.proj(stream_out)
        stream = stream + gate2[:, None].to(stream.dtype) * self.mlp(_modulate(self.norm2(stream), shift2, scale2))
        return mixed, stream


def _joint_mask(key_mask: torch.Tensor | None, stream_mask: torch.Tensor | None, image: torch.Tensor,
                stream: torch.Tensor) -> torch.Tensor | None:
    """The ``(B, N + L)`` key mask over the block's tokens and the stream's (None when every key is real)."""
    if key_mask is None and stream_mask is None:
        return None
    def real(mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if mask is None else mask
    return torch.cat([real(key_mask, image), real(stream_mask, stream)], dim=1)


class JointAttention(ConditioningMethod):
    """Options:
        mlp_ratio: the caption stream's MLP width over its token width (default 4, as the image stream's).
    """

    name = "joint_attention"

    def __init__(self, wiring: Wiring, mlp_ratio: float = 4.0):
        super().__init__(wiring)
        self.sites = self.require_sites(wiring.sites_of("joint"), "joint (a transformer block's self-attention)")
        widths = sorted({s.channels for s in self.sites})
        if len(widths) > 1:
            raise UserError(f"Conditioning method 'joint_attention' carries one caption stream through every block, "
                            f"but this backbone's attention widths differ ({', '.join(map(str, widths))}); use "
                            "cross_attention instead.")
        width = widths[0]
        self.pooled_token = wiring.token_dim is None and wiring.has_pooled
        if wiring.has_pooled:  # the caption stream's modulation reads it, as SD3's does
            self.require_pooled(wiring)
        if not self.pooled_token:
            self.require_tokens(wiring)
        self.embed = nn.Linear(wiring.embed_dim if self.pooled_token else wiring.token_dim, width)
        self.time_token = nn.Linear(wiring.embed_dim, width) if wiring.use_timestep else None
        last = len(self.sites) - 1
        self.streams = nn.ModuleList(JointBlockStream(width, mlp_ratio, last=i == last) for i in range(len(self.sites)))
        for module in self.streams.modules():  # the DiT's initialisation of its own blocks
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.generator = SiteParameterGenerator(wiring.embed_dim, [s.modulation_size for s in self.streams])

    def stream(self, signals: Signals) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stream's first tokens ``(B, L, C)`` (padded ones zeroed) and their mask (None when all are real)."""
        if self.pooled_token:
            tokens, mask = self.embed(signals.pooled[:, None]), None
        else:
            if signals.tokens is None:
                raise ValueError("Conditioning method 'joint_attention' needs condition tokens, but the call gave "
                                 "none: pass condition.tokens (a text encoder's output).")
            tokens, mask = self.embed(signals.tokens.to(self.embed.weight.dtype)), signals.mask
            if mask is not None:
                tokens = tokens * mask[..., None].to(tokens.dtype)
        if self.time_token is not None:
            tokens = torch.cat([tokens, self.time_token(signals.t_emb)[:, None].to(tokens.dtype)], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        return tokens, mask

    def register(self, signals: Signals, state: SiteState) -> None:
        tokens, mask = self.stream(signals)
        state.set_stream(tokens)
        vector = signals.t_emb if not self.reads_pooled else signals.t_emb + signals.pooled
        for site, block, modulation in zip(self.sites, self.streams, self.generator(vector), strict=True):
            state.add_join(site, lambda attn, h, key_mask, stream, b=block, m=modulation:
                           b(attn, h, stream, _joint_mask(key_mask, mask, h, tokens), m))

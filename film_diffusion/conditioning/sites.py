"""The contract between backbones and conditioning methods.

A backbone declares its **sites** (places where a condition may act) and, in ``forward``, calls the
:class:`SiteState` at each one. A method declares nothing about backbones: it picks the sites whose
kind it handles and registers its effect there once per forward pass. Neither side names the other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

SiteKind = Literal["input", "sequence", "norm", "gate", "block_in", "block_out", "context", "joint"]
"""What a method may do at a site:

- ``input``:     the image input ``(B, C, H, W)``; a method may concatenate channels.
- ``sequence``:  the token sequence ``(B, N, C)``; a method may append tokens (removed before the output).
- ``norm``:      right after a normalisation; a method may apply a per-channel affine ``scale * x + shift``.
- ``gate``:      a residual branch's output just before the add; a method may scale it per channel.
- ``block_in`` / ``block_out``: a block's input / output; per-channel affine, like ``norm``.
- ``context``:   a place in a block for a residual update that reads the condition tokens.
- ``joint``:     a block's self-attention, which a method may join with a token stream of its own that the backbone
                 carries from block to block (``SiteState.stream``): one softmax over the block's tokens and the
                 stream's, each stream with its own projections (SD3's MMDiT). The backbone passes its attention
                 layer, which has ``forward_joint`` (``layers.SelfAttention``); a block without self-attention has
                 no joint site.

A site's name ends with its role in its block (``blocks.3.attn_norm`` -> ``attn_norm``): sites of one role in
different blocks play the same part, which a method that shares parameters among blocks reads (adaLN-single).
"""

Layout = Literal["tokens", "image"]

Join = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"],
                tuple[torch.Tensor, "torch.Tensor | None"]]
"""What a method registers at a ``joint`` site: see :meth:`SiteState.add_join`."""


@dataclass(frozen=True)
class Site:
    """One place in a backbone where a condition may act.

    ``layout`` says how the features there are laid out: ``tokens`` = ``(B, N, C)``, ``image`` =
    ``(B, C, H, W)``. ``num_heads`` is the backbone's head count there (a hint for attention methods).
    """

    name: str
    kind: SiteKind
    channels: int
    layout: Layout = "tokens"
    num_heads: int | None = None


def per_channel(v: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Shape a ``(B, C)`` vector to broadcast over features of the given layout."""
    return v[:, None, :] if layout == "tokens" else v[:, :, None, None]


@dataclass
class Signals:
    """What methods read, computed once per forward pass by the conditioning stack.

    t_emb:  timestep embedding ``(B, E)``.
    pooled: the pooled condition already embedded to width ``E`` (text pooled vector and/or class label), or None.
    tokens: the condition tokens ``(B, L, Dt)`` as the encoder gave them, or None; ``mask`` ``(B, L)`` or None.
    """

    t_emb: torch.Tensor
    pooled: torch.Tensor | None
    tokens: torch.Tensor | None
    mask: torch.Tensor | None


class SiteState:
    """The effects every method registered for one forward pass, looked up by site name.

    A site nobody registered at is the identity, so a backbone calls every site unconditionally.
    Effects from several methods at one site compose in the order the methods are listed.
    """

    def __init__(self) -> None:
        self._affine: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self._gates: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._residuals: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = defaultdict(list)
        self._tokens: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = defaultdict(list)
        self._channels: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._joins: dict[str, Join] = {}
        self.stream: torch.Tensor | None = None
        """The token stream a method carries through the blocks ``(B, L, C)``, or None. The backbone passes it
        into and out of each block explicitly (never through this object), so a recomputed block (gradient
        checkpointing) reads the stream it first read."""

    # -- registration (methods) ------------------------------------------------------------------
    def add_affine(self, site: Site, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Register ``x -> scale * x + shift`` with ``(B, C)`` scale and shift."""
        self._affine[site.name].append((per_channel(scale, site.layout), per_channel(shift, site.layout)))

    def add_gate(self, site: Site, gate: torch.Tensor) -> None:
        """Register ``branch -> gate * branch`` with a ``(B, C)`` gate."""
        self._gates[site.name].append(per_channel(gate, site.layout))

    def add_residual(self, site: Site, update: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Register ``x -> x + update(x)``."""
        self._residuals[site.name].append(update)

    def add_tokens(self, site: Site, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Register ``(B, M, C)`` tokens to append to a sequence; ``mask`` ``(B, M)``, True = real."""
        self._tokens[site.name].append((tokens, mask))

    def set_stream(self, tokens: torch.Tensor) -> None:
        """Start the token stream the backbone carries through its blocks to the ``joint`` sites."""
        if self.stream is not None:
            raise ValueError("Two conditioning methods each started a token stream; a backbone carries one.")
        self.stream = tokens

    def add_join(self, site: Site, join: Join) -> None:
        """Register ``join(attn, h, key_mask, stream) -> (attention output for h, the stream after this block)``
        at a ``joint`` site; ``attn`` is the block's attention layer (see ``SiteKind``)."""
        if site.name in self._joins:
            raise ValueError(f"Two conditioning methods joined the attention at site '{site.name}'; list one.")
        self._joins[site.name] = join

    def add_channels(self, site: Site, channels: torch.Tensor) -> None:
        """Register a ``(B, K)`` vector to broadcast over the image and concatenate as K input channels."""
        self._channels[site.name].append(channels)

    # -- application (backbones) -----------------------------------------------------------------
    # Parameters take the features' dtype, so that under autocast a bf16 stream is not promoted to
    # float32 by float32 parameters (a generator emits float32).
    def affine(self, site: str, x: torch.Tensor) -> torch.Tensor:
        for scale, shift in self._affine.get(site, ()):
            x = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))
        return x

    def gated_add(self, site: str, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """``x + gate * branch``: the residual add of a gated branch, in one fused op for a single gate."""
        gates = self._gates.get(site, ())
        if not gates:
            return x + branch
        for gate in gates[1:]:
            branch = branch * gate.to(branch.dtype)
        return torch.addcmul(x, branch.to(x.dtype), gates[0].to(x.dtype))

    def residual(self, site: str, x: torch.Tensor) -> torch.Tensor:
        for update in self._residuals.get(site, ()):
            x = x + update(x)
        return x

    def joint_attention(self, site: str, attn: nn.Module, h: torch.Tensor, key_mask: torch.Tensor | None,
                        stream: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's attention of ``h`` (joined by a method's stream if one registered here) and the stream
        after this block (unchanged where no method joined)."""
        join = self._joins.get(site)
        if join is None:
            return attn(h, key_mask), stream
        return join(attn, h, key_mask, stream)

    def extend_sequence(self, site: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Append registered tokens to ``x`` ``(B, N, C)``; return it and a key mask (None if all real)."""
        extra = self._tokens.get(site, ())
        if not extra:
            return x, None
        masks = [torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)]
        masks += [torch.ones(t.shape[:2], dtype=torch.bool, device=x.device) if m is None else m for t, m in extra]
        any_padding = any(m is not None for _, m in extra)
        x = torch.cat([x, *(t.to(x.dtype) for t, _ in extra)], dim=1)
        return x, torch.cat(masks, dim=1) if any_padding else None

    def extend_channels(self, site: str, x: torch.Tensor) -> torch.Tensor:
        extra = self._channels.get(site, ())
        if not extra:
            return x
        maps = [c.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:]) for c in extra]
        return torch.cat([x, *maps], dim=1)

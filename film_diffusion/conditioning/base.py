"""The small interface every conditioning method implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from film_diffusion.conditioning.sites import Signals, Site, SiteKind, SiteState
from film_diffusion.errors import UserError


@dataclass(frozen=True)
class Wiring:
    """What a method is told about the model it joins, without knowing which backbone it is.

    sites:         every site the backbone exposes.
    embed_dim:     width of the timestep embedding and of the embedded pooled condition.
    token_dim:     width of the condition tokens, or None when the model takes no tokens.
    has_pooled:    whether a pooled condition reaches the model (``cond_pooled_dim`` or ``num_classes``).
    use_condition: the method carries the condition.
    use_timestep:  the method carries the timestep too (``timestep_route``).
    """

    sites: tuple[Site, ...]
    embed_dim: int
    token_dim: int | None
    has_pooled: bool
    use_condition: bool
    use_timestep: bool

    def sites_of(self, *kinds: SiteKind) -> list[Site]:
        return [s for s in self.sites if s.kind in kinds]


@dataclass(frozen=True)
class Modulation:
    """What a modulating method gives one site for a batch: ``scale * h + shift`` at a norm-like site (``gate`` is
    None), or ``gate * branch`` at a gate site (``scale`` and ``shift`` are None); every tensor ``(B, C)``."""

    site: Site
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    gate: torch.Tensor | None = None


class ConditioningMethod(nn.Module, ABC):
    """A way for a condition to enter a denoiser. One file per method; it never imports a backbone.

    Subclasses pick the sites they act on from ``wiring.sites`` in ``__init__`` and, once per forward
    pass, compute everything they can and register their effects in a :class:`SiteState`.
    """

    name: str
    timestep_method: bool = False
    """A way of taking the timestep (adaLN-single): under ``timestep_route="native"`` a listed method of this kind
    carries the timestep in place of the backbone's own timestep method."""

    def __init__(self, wiring: Wiring):
        super().__init__()
        self.use_condition = wiring.use_condition
        self.use_timestep = wiring.use_timestep
        self.reads_pooled = False  # set by methods that read the pooled condition, so its embedder is built
        self.reads_tokens = False  # set by methods that read the condition tokens

    def extra_input_channels(self, site: Site) -> int:
        """Channels this method concatenates at an ``input`` site (the backbone sizes its first layer so)."""
        return 0

    def zeroed_gates(self) -> list[Site]:
        """The gate sites this method starts at exactly zero. A backbone does not also zero-initialise the
        branch such a gate multiplies: a product of two zeros gets no gradient, so neither would learn."""
        return []

    @abstractmethod
    def register(self, signals: Signals, state: SiteState) -> None:
        """Compute this pass's effects and register them at the sites."""

    # -- helpers shared by methods ---------------------------------------------------------------
    def require_sites(self, sites: list[Site], what: str) -> list[Site]:
        if not sites:
            raise UserError(f"Conditioning method '{self.name}' found no {what} site in this backbone; "
                            "choose a method the backbone supports or change its layout.")
        return sites

    def require_pooled(self, wiring: Wiring) -> None:
        """Declare that this method reads the pooled condition, and fail clearly if none can reach it."""
        self.reads_pooled = wiring.use_condition
        if wiring.use_condition and not wiring.has_pooled:
            raise UserError(f"Conditioning method '{self.name}' needs a pooled condition: set cond_pooled_dim "
                            "(the text encoder's pooled_dim) or num_classes.")

    def require_tokens(self, wiring: Wiring) -> None:
        """Declare that this method reads the condition tokens, and fail clearly if there are none."""
        self.reads_tokens = wiring.use_condition
        if wiring.use_condition and wiring.token_dim is None:
            raise UserError(f"Conditioning method '{self.name}' needs condition tokens: set cond_token_dim "
                            "(the text encoder's token_dim), or cond_pooled_dim / num_classes for a single token.")

    def drive_vector(self, signals: Signals) -> torch.Tensor:
        """The vector this method is driven by: embedded pooled condition and/or timestep, summed.

        ``signals.pooled`` is set whenever a method reads it: ``require_pooled`` refuses a model with no
        pooled source, and ``ConditioningStack.check_inputs`` a call that leaves one unfed."""
        v = signals.t_emb if self.use_timestep else None
        if self.use_condition:
            v = signals.pooled if v is None else v + signals.pooled
        return v


class ModulatingMethod(ConditioningMethod):
    """A method that modulates sites per channel from a vector (FiLM, adaLN-Zero): :meth:`modulation` is the one
    place that says what each site receives, and :meth:`register` applies exactly that. Analyses read and change
    a model's modulation through :meth:`modulation`, so they follow the method whatever its internals."""

    @abstractmethod
    def modulation(self, signals: Signals) -> list[Modulation]:
        """Every modulated site's scale and shift (or gate) for this batch, in site order."""

    def register(self, signals: Signals, state: SiteState) -> None:
        for m in self.modulation(signals):
            if m.gate is not None:
                state.add_gate(m.site, m.gate)
            else:
                state.add_affine(m.site, m.scale, m.shift)

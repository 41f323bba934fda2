"""FiLM: Feature-wise Linear Modulation (Perez et al., 2018, arXiv:1709.07871).

A generator maps the pooled condition (plus the timestep embedding when the route says so) to a
``(gamma, beta)`` pair for every modulated site in one pass; each site applies ``gamma * h + beta``
per channel. The paper's best placement is right after normalisation (before the non-linearity).
"""

from __future__ import annotations

from typing import Literal

import torch

from film_diffusion.conditioning.base import ModulatingMethod, Modulation, Wiring
from film_diffusion.conditioning.generator import SiteParameterGenerator
from film_diffusion.conditioning.sites import Signals, SiteKind
from film_diffusion.errors import UserError

PLACEMENT_SITES: dict[str, SiteKind] = {
    "after_norm": "norm",        # the paper's default and best: gamma * norm(h) + beta
    "after_residual": "block_out",  # on the block's output, after the residual add
    "before_block": "block_in",  # on the block's input
}


class FiLM(ModulatingMethod):
    """FiLM generator plus FiLM layers at every site of the chosen placement.

    Options:
        gamma:      ``"delta"`` (default) predicts ``gamma = 1 + delta``, so a zero-initialised head is the
                    identity; ``"raw"`` predicts ``gamma`` directly, as in the paper's ablation.
        depth:      hidden layers in the generator; 0 (default) is SiLU then one Linear, DiT's adaLN head
                    (the FiLM paper's generator is a linear map of the question embedding).
        hidden_dim: width of those hidden layers (default: the embedding width).
        placement:  ``"after_norm"`` (default), ``"after_residual"`` or ``"before_block"``.
        zero_init:  start every site at the identity (default True): the generator's last layer is zeroed,
                    so delta = beta = 0, and with raw gamma its gamma biases are 1.
    """

    name = "film"

    def __init__(self, wiring: Wiring, gamma: Literal["delta", "raw"] = "delta", depth: int = 0,
                 hidden_dim: int | None = None, placement: str = "after_norm", zero_init: bool = True):
        super().__init__(wiring)
        if gamma not in ("delta", "raw"):
            raise UserError(f"film option gamma={gamma!r} is unknown; use 'delta' or 'raw'.")
        if placement not in PLACEMENT_SITES:
            raise UserError(f"film option placement={placement!r} is unknown; use one of {', '.join(PLACEMENT_SITES)}.")
        self.require_pooled(wiring)
        self.gamma_offset = 1.0 if gamma == "delta" else 0.0
        self.sites = self.require_sites(wiring.sites_of(PLACEMENT_SITES[placement]), PLACEMENT_SITES[placement])
        sizes = [2 * s.channels for s in self.sites]
        self.generator = SiteParameterGenerator(wiring.embed_dim, sizes, depth=depth, hidden_dim=hidden_dim,
                                                zero_init=zero_init)
        if zero_init and gamma == "raw":  # raw gamma starts at 1 too: gamma = 1, beta = 0 is the identity
            with torch.no_grad():
                for params in torch.split(self.generator.out.bias, sizes):
                    params[: params.shape[0] // 2].fill_(1.0)

    def modulation(self, signals: Signals) -> list[Modulation]:
        """Each site's ``(gamma, beta)`` as applied, ``gamma * h + beta`` (``gamma = 1 + delta`` by default)."""
        found = []
        for site, params in zip(self.sites, self.generator(self.drive_vector(signals)), strict=True):
            gamma, beta = params.chunk(2, dim=-1)
            found.append(Modulation(site, scale=gamma + self.gamma_offset, shift=beta))
        return found

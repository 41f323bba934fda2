"""adaLN-Zero (Peebles & Xie, 2023, "Scalable Diffusion Models with Transformers", arXiv:2212.09748).

From ``SiLU(c)`` one generator emits, for every block, a shift and scale for each normalisation and a
gate for each residual branch; the final layer's norm gets a shift and scale too. Zero-initialised,
every gate starts at 0, so every block starts as the identity. On a U-Net this is scale-shift
normalisation in each ResBlock with a zero-initialised gate on its residual branch.
"""

from __future__ import annotations

from film_diffusion.conditioning.base import ModulatingMethod, Modulation, Wiring
from film_diffusion.conditioning.generator import SiteParameterGenerator
from film_diffusion.conditioning.sites import Signals, Site


class AdaLNZero(ModulatingMethod):
    """Options:
        zero_init: zero the modulation layer (default True, the "-Zero" of the paper). False gives plain adaLN
                   with gates, whose blocks do not start as the identity.
    """

    name = "adaln_zero"

    def __init__(self, wiring: Wiring, zero_init: bool = True):
        super().__init__(wiring)
        self.require_pooled(wiring)
        self.sites = self.require_sites(wiring.sites_of("norm", "gate"), "norm")
        # In site order a DiT block reads: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        sizes = [2 * s.channels if s.kind == "norm" else s.channels for s in self.sites]
        self.generator = SiteParameterGenerator(wiring.embed_dim, sizes, zero_init=zero_init)
        self.zero_init = zero_init

    def zeroed_gates(self) -> list[Site]:
        return [s for s in self.sites if s.kind == "gate"] if self.zero_init else []

    def modulation(self, signals: Signals) -> list[Modulation]:
        """Each norm's ``(1 + scale, shift)`` and each residual branch's gate."""
        found = []
        for site, params in zip(self.sites, self.generator(self.drive_vector(signals)), strict=True):
            if site.kind == "norm":
                shift, scale = params.chunk(2, dim=-1)
                found.append(Modulation(site, scale=scale + 1.0, shift=shift))
            else:
                found.append(Modulation(site, gate=params))
        return found

"""adaLN-single (Chen et al., 2023, "PixArt-alpha", arXiv:2310.00426).

adaLN-Zero gives every block its own generator, a Linear from the embedding to six vectors of the block's
width: about a quarter of DiT-XL/2's parameters. adaLN-single keeps one generator, shared by all blocks, that
emits one set of vectors (shift and scale per norm, a gate per residual branch); each block adds a learned
table of its own to it. Sites share the generator's output by their role in the block (the last part of the
site's name: ``attn_norm``, ``attn_gate``, ``mlp_norm``, ``mlp_gate``), so every site of one role must have one
width. The final layer's ``norm`` has a slot of its own in the shared generator, where PixArt adds the timestep
embedding itself to its final table (a departure of ``(E + 1) * 2C`` parameters, so the final layer is modulated
like every other site; PixArt's weights do not map onto it one to one).

It is a way of taking the timestep: under ``timestep_route="native"`` it carries the timestep in place of the
backbone's own method (the DiT's adaLN-Zero). The pooled condition, when the model has one, is added to the
timestep embedding before the shared generator, as SD3 and Flux add their pooled text vector to the timestep
(PixArt-alpha adds resolution and aspect-ratio embeddings there, and no text); without one it carries the
timestep alone and the caption enters through the other listed methods (cross-attention in PixArt).
"""

from __future__ import annotations

import torch
from torch import nn

from film_diffusion.conditioning.base import ModulatingMethod, Modulation, Wiring
from film_diffusion.conditioning.generator import SiteParameterGenerator
from film_diffusion.conditioning.sites import Signals, Site
from film_diffusion.errors import UserError


def role(site: Site) -> str:
    """A site's role in its block: the last part of its name (see ``conditioning.sites``)."""
    return site.name.rsplit(".", 1)[-1]


def _size(site: Site) -> int:
    """Parameters a site reads: shift and scale at a norm, a gate at a gate."""
    return 2 * site.channels if site.kind == "norm" else site.channels


class AdaLNSingle(ModulatingMethod):
    """Options:
        zero_init: zero the shared generator and the per-block tables (default True): every gate starts at 0,
                   so every block starts as the identity, as with adaLN-Zero. False initialises as PixArt-alpha
                   does: the tables normal with std ``1/sqrt(width)``, the generator's weight normal with std
                   0.02, so its blocks do not start as the identity.
    """

    name = "adaln_single"
    timestep_method = True

    def __init__(self, wiring: Wiring, zero_init: bool = True):
        super().__init__(wiring)
        self.reads_pooled = wiring.use_condition and wiring.has_pooled
        self.sites = self.require_sites(wiring.sites_of("norm", "gate"), "norm")
        widths: dict[str, set[int]] = {}
        for site in self.sites:
            widths.setdefault(role(site), set()).add(site.channels)
        mixed = {r: sorted(w) for r, w in widths.items() if len(w) > 1}
        if mixed:
            r, w = next(iter(mixed.items()))
            raise UserError(f"Conditioning method 'adaln_single' shares one modulation among the sites of each role, "
                            f"but this backbone's '{r}' sites have widths {', '.join(map(str, w))}; use adaln_zero "
                            "or film on it.")
        self.roles = list(dict.fromkeys(role(s) for s in self.sites))  # in site order
        first = {role(s): s for s in reversed(self.sites)}
        self.generator = SiteParameterGenerator(wiring.embed_dim, [_size(first[r]) for r in self.roles],
                                                zero_init=zero_init)
        self.table = nn.Parameter(torch.zeros(sum(_size(s) for s in self.sites)))
        self.zero_init = zero_init
        if not zero_init:
            with torch.no_grad():
                nn.init.normal_(self.generator.out.weight, std=0.02)
                nn.init.zeros_(self.generator.out.bias)
                for site, part in zip(self.sites, self.table.split([_size(s) for s in self.sites]), strict=True):
                    part.normal_(std=site.channels**-0.5)

    def zeroed_gates(self) -> list[Site]:
        return [s for s in self.sites if s.kind == "gate"] if self.zero_init else []

    def drive_vector(self, signals: Signals) -> torch.Tensor:
        """The timestep embedding, plus the embedded pooled condition when this method reads one."""
        return signals.t_emb if not self.reads_pooled else signals.t_emb + signals.pooled

    def modulation(self, signals: Signals) -> list[Modulation]:
        """Each norm's ``(1 + scale, shift)`` and each residual branch's gate: its role's shared slot plus its
        own table entry."""
        shared = dict(zip(self.roles, self.generator(self.drive_vector(signals)), strict=True))
        tables = self.table.split([_size(s) for s in self.sites])
        found = []
        for site, table in zip(self.sites, tables, strict=True):
            params = shared[role(site)] + table.to(shared[role(site)].dtype)
            if site.kind == "norm":
                shift, scale = params.chunk(2, dim=-1)
                found.append(Modulation(site, scale=scale + 1.0, shift=shift))
            else:
                found.append(Modulation(site, gate=params))
        return found

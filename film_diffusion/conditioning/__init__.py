"""Conditioning methods: how a condition enters the denoiser. See ``stack.METHODS`` for the config names."""

from film_diffusion.conditioning.base import ConditioningMethod, ModulatingMethod, Modulation, Wiring
from film_diffusion.conditioning.condition import Condition
from film_diffusion.conditioning.sites import Signals, Site, SiteState
from film_diffusion.conditioning.stack import METHODS, TIMESTEP_ROUTES, ConditioningStack, parse_methods

__all__ = [
    "METHODS",
    "TIMESTEP_ROUTES",
    "Condition",
    "ConditioningMethod",
    "ConditioningStack",
    "Modulation",
    "ModulatingMethod",
    "Signals",
    "Site",
    "SiteState",
    "Wiring",
    "parse_methods",
]

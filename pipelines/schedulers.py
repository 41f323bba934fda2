"""Sampling schedulers by short name: diffusers' own classes, nothing written here.

A scheduler built by name takes the saved scheduler's config (``from_config``), so the noise schedule
and the prediction type the model was trained with carry over; only the sampling algorithm changes.
"""

from __future__ import annotations

from typing import Any

import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from film_diffusion.errors import UserError

SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "flow_euler": (FlowMatchEulerDiscreteScheduler, {}),
}
"""Short name -> (diffusers class, options). Any other diffusers scheduler is taken by its class name."""

LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
"""``variance_type`` values with which a diffusers scheduler reads a learned variance from the model output."""


def is_flow_scheduler(scheduler: SchedulerMixin | type[SchedulerMixin]) -> bool:
    """Flow-matching schedulers integrate a velocity; every other one denoises a diffusion (epsilon/v/x0)."""
    cls = scheduler if isinstance(scheduler, type) else type(scheduler)
    return cls.__name__.startswith("FlowMatch")


def takes_learned_variance(scheduler: SchedulerMixin) -> bool:
    return scheduler.config.get("variance_type") in LEARNED_VARIANCE_TYPES


def scheduler_from_name(name: str, current: SchedulerMixin) -> SchedulerMixin:
    """A new scheduler of the kind ``name`` (a short name above or a diffusers class name), built from
    ``current``'s config. A flow-matching model needs a flow-matching scheduler and a diffusion model a
    diffusion one: crossing over is refused, since the model's prediction would be misread."""
    if name in SCHEDULERS:
        cls, options = SCHEDULERS[name]
    else:
        cls, options = getattr(diffusers, name, None), {}
        if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
            raise UserError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)} or a diffusers "
                            "scheduler class name such as 'DDIMScheduler'.")
    scheduler = cls.from_config(current.config, **options)
    if is_flow_scheduler(scheduler) != is_flow_scheduler(current):
        kind = "flow-matching" if is_flow_scheduler(current) else "diffusion (epsilon/v)"
        matching = [n for n, (c, _) in SCHEDULERS.items() if is_flow_scheduler(c) == is_flow_scheduler(current)]
        raise UserError(f"Scheduler {name!r} does not fit this {kind} model (saved with {type(current).__name__}); "
                        f"choose one of {', '.join(matching)}.")
    return scheduler

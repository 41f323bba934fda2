"""Sampling schedulers by short name: diffusers' own classes, nothing written here.

A scheduler built by name takes the saved scheduler's config (``from_config``), so the noise schedule
and the prediction type the model was trained with carry over; only the sampling algorithm changes.
"""

from __future__ import annotations

import inspect
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

VARIANCE_READERS = ("DDPMScheduler", "DDPMParallelScheduler")
"""Schedulers that split a learned variance off by the sample's channels. diffusers' DPM-Solver and SA-Solver
take ``variance_type`` too but keep the first three channels (``model_output[:, :3]``, the DiT sampler's
quirk), which is wrong for four-channel latents; they get the epsilon half with ``variance_type=None``."""


def is_flow_scheduler(scheduler: SchedulerMixin | type[SchedulerMixin]) -> bool:
    """Flow-matching schedulers integrate a velocity; every other one denoises a diffusion (epsilon/v/x0)."""
    cls = scheduler if isinstance(scheduler, type) else type(scheduler)
    return cls.__name__.startswith("FlowMatch")


def takes_learned_variance(scheduler: SchedulerMixin) -> bool:
    """Whether the scheduler reads a learned variance from the model output's second half."""
    return _set_to_learned_variance(scheduler) and type(scheduler).__name__ in VARIANCE_READERS


def _set_to_learned_variance(scheduler: SchedulerMixin) -> bool:
    return scheduler.config.get("variance_type") in LEARNED_VARIANCE_TYPES


def _has_variance_type(cls: type[SchedulerMixin]) -> bool:
    """A scheduler built from another's config keeps keys it does not take; only its own ones count."""
    return "variance_type" in inspect.signature(cls.__init__).parameters


def check_scheduler(scheduler: SchedulerMixin, model_scheduler: SchedulerMixin | None = None) -> None:
    """Refuse a scheduler that would misread the model: one that keeps only three channels of a learned
    variance, or one of the other kind (flow matching / diffusion) than the model's ``model_scheduler``."""
    if (_has_variance_type(type(scheduler)) and type(scheduler).__name__ not in VARIANCE_READERS
            and _set_to_learned_variance(scheduler)):
        raise UserError(f"A {type(scheduler).__name__} with variance_type={scheduler.config.variance_type!r} keeps "
                        "only three channels of the model output; build it with variance_type=None (the pipeline "
                        "then gives it the epsilon half) or use DDPM to sample with the learned variance.")
    if model_scheduler is not None and is_flow_scheduler(scheduler) != is_flow_scheduler(model_scheduler):
        kind = "flow-matching" if is_flow_scheduler(model_scheduler) else "diffusion (epsilon/v)"
        matching = [n for n, (c, _) in SCHEDULERS.items() if is_flow_scheduler(c) == is_flow_scheduler(model_scheduler)]
        raise UserError(f"A {type(scheduler).__name__} does not fit this {kind} model (saved with "
                        f"{type(model_scheduler).__name__}); choose one of {', '.join(matching)}.")


def scheduler_from_name(name: str, current: SchedulerMixin, learned_variance: bool) -> SchedulerMixin:
    """A new scheduler of the kind ``name`` (a short name above or a diffusers class name), built from
    ``current``'s config. A flow-matching model needs a flow-matching scheduler and a diffusion model a
    diffusion one: crossing over is refused, since the model's prediction would be misread.

    ``learned_variance``: whether the model predicts a variance (a ``learn_sigma`` DiT). It decides the new
    scheduler's ``variance_type``, not ``current``'s config, which an earlier swap may have cleared: the schedulers
    that read a learned variance correctly (``VARIANCE_READERS``) get ``learned_range``, the others ``None`` (the
    pipeline then gives them the epsilon half)."""
    if name in SCHEDULERS:
        cls, options = SCHEDULERS[name]
    else:
        cls, options = getattr(diffusers, name, None), {}
        if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
            raise UserError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)} or a diffusers "
                            "scheduler class name such as 'DDIMScheduler'.")
    if _has_variance_type(cls) and cls.__name__ not in VARIANCE_READERS:
        options = {**options, "variance_type": None}
    elif cls.__name__ in VARIANCE_READERS and (learned_variance or _set_to_learned_variance(current)):
        options = {**options, "variance_type": "learned_range" if learned_variance else None}
    scheduler = cls.from_config(current.config, **options)
    check_scheduler(scheduler, current)
    return scheduler

"""Image-to-image as SDEdit (Meng et al. 2022): noise the input image to the point ``strength`` of the way back
along the sampling schedule, then denoise from there with the caption.

The step arithmetic is diffusers' img2img pipelines' (``get_timesteps``): of ``n`` steps the last
``int(n * strength)`` run. At strength 1 every step runs and the start is the noise itself, as in text-to-image
(diffusers' inpainting pipelines do the same at full strength), so strength 1 with the same noise gives
exactly the text-to-image sample, whatever the schedule's first noise level.
"""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from film_diffusion.errors import UserError
from film_diffusion.pipelines.schedulers import is_flow_scheduler

DEFAULT_STRENGTH = 0.8
"""diffusers' img2img default: most of the schedule is re-drawn, the layout of the input survives."""


def check_can_start_midway(scheduler: SchedulerMixin) -> None:
    """A scheduler starts mid-way when it can noise a clean sample to one of its timesteps: ``add_noise``
    (diffusion schedulers) or ``scale_noise`` (flow matching)."""
    name = "scale_noise" if is_flow_scheduler(scheduler) else "add_noise"
    if not callable(getattr(scheduler, name, None)):
        raise UserError(f"A {type(scheduler).__name__} cannot start from a noised image (it has no {name}); "
                        "sample image-to-image with ddim, ddpm, euler, dpm++, unipc or flow_euler.")


def check_strength(strength: float) -> None:
    if not 0 < strength <= 1:
        raise UserError(f"strength must be in (0, 1]: the fraction of the sampling steps that re-draw the image "
                        f"(1 ignores it); got {strength!r}.")


def midway_timesteps(scheduler: SchedulerMixin, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The timesteps left after skipping the first ``1 - strength`` of the schedule (``set_timesteps`` already
    called); tells the scheduler where it begins, for those that keep a step index."""
    run = min(int(num_inference_steps * strength), num_inference_steps)
    if run == 0:
        raise UserError(f"strength={strength} of {num_inference_steps} steps runs no step; raise strength to at least "
                        f"{1 / num_inference_steps:g} or take more steps.")
    start = (num_inference_steps - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def noised(scheduler: SchedulerMixin, clean: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """``clean`` at the noise level of ``timestep``, with ``noise``: the scheduler's own forward process."""
    timesteps = timestep.reshape(1).repeat(len(clean))
    if is_flow_scheduler(scheduler):
        return scheduler.scale_noise(clean, timesteps, noise)
    return scheduler.add_noise(clean, noise, timesteps)

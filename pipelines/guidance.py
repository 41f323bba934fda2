"""Classifier-free guidance with the two refinements diffusers' pipelines offer: an interval of steps and a
rescale.

- ``interval=(start, stop)``: guide only the sampling steps ``i`` with ``int(start * n) <= i < int(stop * n)``
  (``n`` steps in all), as diffusers' guiders read their ``start`` / ``stop``. Kynkaanniemi et al. (2024,
  "Applying guidance in a limited interval improves sample and distribution quality") found guidance harmful
  at the noisiest steps and useless at the last ones. A step outside the interval runs the conditional half
  alone, so it costs one forward pass of the batch instead of two.
- ``rescale``: Lin et al. (2024, "Common diffusion noise schedules and sample steps are flawed", sec. 3.4)
  move the guided prediction's standard deviation back toward the conditional one's; diffusers'
  ``rescale_noise_cfg`` does it, and this calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from film_diffusion.errors import UserError


@dataclass(frozen=True)
class Guidance:
    """How the conditional and unconditional predictions combine at each step.

    ``scale``: ``uncond + scale * (cond - uncond)``; 1 or less turns guidance off (the conditional prediction
    alone, as in diffusers). ``interval``: the fraction of the steps that is guided. ``rescale``: 0 is plain
    classifier-free guidance, 1 the guided prediction at the conditional one's standard deviation.
    """

    scale: float
    interval: tuple[float, float] = (0.0, 1.0)
    rescale: float = 0.0

    def __post_init__(self) -> None:
        if not self.scale >= 0:
            raise UserError(f"guidance_scale must be 0 or more (1 turns guidance off), got {self.scale!r}.")
        try:
            start, stop = (float(fraction) for fraction in self.interval)
        except (TypeError, ValueError):
            start, stop = 1.0, 0.0  # not two numbers: refused below
        if not 0 <= start <= stop <= 1:
            raise UserError(f"guidance_interval must be (start, stop) with 0 <= start <= stop <= 1, the fractions of "
                            f"the sampling steps to guide; got {self.interval!r}.")
        if not 0 <= self.rescale <= 1:
            raise UserError(f"guidance_rescale must be between 0 (plain guidance) and 1, got {self.rescale!r}.")

    @property
    def on(self) -> bool:
        """Whether any step is guided."""
        return self.scale > 1 and self.interval[0] < self.interval[1]

    def guides_step(self, index: int, num_steps: int) -> bool:
        """Whether step ``index`` (0-based) of ``num_steps`` runs both halves and combines them."""
        start, stop = (int(fraction * num_steps) for fraction in self.interval)
        return self.scale > 1 and start <= index < stop

    def combine(self, uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The guided prediction from the two halves' predictions (the channels that are guided)."""
        guided = uncond + self.scale * (cond - uncond)
        if self.rescale > 0:
            guided = rescale_noise_cfg(guided, cond, guidance_rescale=self.rescale)
        return guided

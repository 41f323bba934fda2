"""Every random draw of a training step comes from one generator whose state is checkpointed.

All processes hold the same generator and draw for the whole global micro-batch, each keeping its own
slice: a run's noise, timesteps and caption dropout are then the same on 1 or N processes, and a
resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import torch


class ShardedRandom:
    """Draws for ``world`` processes' samples at once; returns process ``rank``'s ``n`` samples."""

    def __init__(self, seed: int, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device
        self.generator = torch.Generator(device).manual_seed(seed)

    def _mine(self, values: torch.Tensor) -> torch.Tensor:
        n = values.shape[0] // self.world
        return values[self.rank * n:(self.rank + 1) * n]

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        full = (shape[0] * self.world, *shape[1:])
        return self._mine(torch.randn(full, generator=self.generator, device=self.device, dtype=dtype))

    def rand(self, n: int) -> torch.Tensor:
        return self._mine(torch.rand(n * self.world, generator=self.generator, device=self.device))

    def randint(self, high: int, n: int) -> torch.Tensor:
        return self._mine(torch.randint(0, high, (n * self.world,), generator=self.generator, device=self.device))

    def normal(self, mean: float, std: float, n: int) -> torch.Tensor:
        values = torch.empty(n * self.world, device=self.device).normal_(mean, std, generator=self.generator)
        return self._mine(values)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

"""The run's exponential moving average of the weights: diffusers' ``EMAModel``, with its warm-up a config choice
(``train.ema_warmup``), and a context that swaps the EMA weights in for sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from diffusers.training_utils import EMAModel


class RunEMA(EMAModel):
    """``EMAModel`` whose decay follows diffusers' warm-up, ``min(decay, n / (n + 9))`` at the n-th update, when
    ``warmup`` is True, and is ``decay`` from the first update when it is False."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float, warmup: bool):
        super().__init__(parameters, decay=decay, foreach=True)  # foreach: one fused update, not a loop
        self.warmup = warmup

    def get_decay(self, optimization_step: int) -> float:
        return super().get_decay(optimization_step) if self.warmup else self.decay

    @property
    def last_decay(self) -> float:
        """The decay the last update used (logged as ``ema_decay``); read from the checkpointed update count, so a
        resumed run logs what an uninterrupted one would."""
        return self.get_decay(self.optimization_step)


@contextlib.contextmanager
def ema_weights(ema: EMAModel, model: torch.nn.Module) -> Iterator[None]:
    """The EMA weights in ``model`` for the block, the training weights back afterwards (and the mode)."""
    was_training = model.training
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    model.eval()
    try:
        yield
    finally:
        ema.restore(model.parameters())
        model.train(was_training)

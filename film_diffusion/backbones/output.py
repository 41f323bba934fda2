"""What every backbone shares: the output type (``model(...).sample``), the null class, gradient checkpointing."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput


@dataclass
class DenoiserOutput(BaseOutput):
    """sample: the prediction (epsilon, v or flow velocity), the input's shape
    (twice the channels with learned sigma)."""

    sample: torch.Tensor


class NullClassMixin:
    """``null_class_label`` for any backbone whose conditioning lives in ``self.conditioner``."""

    @property
    def null_class_label(self) -> int | None:
        """The class id meaning "no class" for classifier-free guidance, or None without labels."""
        embedder = self.conditioner.label_embedder
        return None if embedder is None else embedder.null_class


class CheckpointedBlocksMixin:
    """diffusers' gradient checkpointing for our backbones: after ``model.enable_gradient_checkpointing()``,
    every block called through :meth:`run_block` keeps no activations in training and recomputes them in
    the backward pass (less memory, about one more forward pass of time)."""

    _supports_gradient_checkpointing = True
    gradient_checkpointing = False  # diffusers sets it (and _gradient_checkpointing_func) per model
    _gradient_checkpointing_func: Callable

    def run_block(self, block: torch.nn.Module, *args: object) -> Any:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

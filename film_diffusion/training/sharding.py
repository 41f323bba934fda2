"""``train.sharding: fsdp``: the denoiser sharded over the processes with torch's FSDP2 (``fully_shard``), the same
wrapping on GPUs and on the CPU (a gloo group), so that the CPU tests check the path a GPU run takes.

Each block is a unit (a DiT block; a U-Net residual or attention block), the conditioning stack is its own unit, and
the root holds the rest (embeddings, a U-Net's resampling layers, the output layers). The stack's per-site modules
(a cross-attention, a FiLM generator) run inside the blocks, after the stack's own forward, so the stack keeps its
weights gathered from its forward to its backward (``reshard_after_forward=False``): it is a small share of the
model. The learned null is applied inside the stack's forward (``null_mask``), so no weight is read outside a
forward. The EMA keeps one shard per process (diffusers' ``EMAModel`` over the sharded parameters); grids and the
final pipeline read a gathered copy. Checkpoints hold the sharded state (model, optimizer, EMA) through
``torch.distributed.checkpoint``, each process writing its shards, no pickle; the run's other state is the unsharded
run state of :mod:`.checkpoints`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from diffusers.training_utils import EMAModel
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from film_diffusion.backbones.dit import DiT
from film_diffusion.training.ema import ema_weights

SHARDED = "sharded"  # the checkpoint's sub-folder of torch.distributed.checkpoint files


def shard(model: nn.Module) -> None:
    """Shard ``model`` in place (on its device): blocks, the conditioning stack, then the root."""
    if isinstance(model, DiT):
        blocks = list(model.blocks)
    else:  # the U-Net calls its residual and attention blocks one by one (a level has no forward of its own)
        blocks = [b for level in (*model.down, model.mid, *model.up) for b in (*level.res, *level.attn)]
    for block in blocks:
        fully_shard(block)
    fully_shard(model.conditioner, reshard_after_forward=False)
    fully_shard(model)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def gradient_sync(model: nn.Module, accelerator, sync: bool) -> contextlib.AbstractContextManager:
    """Gradients reduced over the processes on this micro-batch (the last of an accumulation) or kept local."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if sync else accelerator.no_sync(model)


def as_float(value: torch.Tensor | float | None) -> float | None:
    """A gradient norm as a number: a sharded model's is a DTensor, reduced over the processes first."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return None if value is None else float(value)


def sampling_weights(ema: EMAModel, denoiser: nn.Module, replica: nn.Module | None,
                     main: bool) -> contextlib.AbstractContextManager:
    """The EMA weights where the pipeline samples, for a block that every process enters: swapped into the
    denoiser on the main process; for a sharded denoiser, gathered (a collective) into ``replica``, the unsharded
    copy the main process samples with."""
    if is_sharded(denoiser):
        return _gathered_ema(ema, replica)
    return ema_weights(ema, denoiser) if main else contextlib.nullcontext()


@contextlib.contextmanager
def _gathered_ema(ema: EMAModel, replica: nn.Module | None) -> Iterator[None]:
    targets = list(replica.parameters()) if replica is not None else [None] * len(ema.shadow_params)
    for shadow, target in zip(ema.shadow_params, targets, strict=True):
        whole = shadow.full_tensor()
        if target is not None:
            target.data.copy_(whole)
    yield


class ShardedState:
    """A sharded run's model, optimizer and EMA weights in a checkpoint: each process writes and reads its shards
    in ``CHECKPOINT/sharded`` with ``torch.distributed.checkpoint``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMAModel):
        self.model, self.optimizer, self.ema = model, getattr(optimizer, "optimizer", optimizer), ema

    def save(self, folder: Path) -> None:
        dcp.save(self._state(), checkpoint_id=str(folder / SHARDED))

    def load(self, folder: Path) -> None:
        state = self._state()
        dcp.load(state, checkpoint_id=str(folder / SHARDED))
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        for shadow, loaded in zip(self.ema.shadow_params, state["ema"].values(), strict=True):
            shadow.copy_(loaded)

    def _state(self) -> dict:
        return {"model": get_model_state_dict(self.model),
                "optimizer": get_optimizer_state_dict(self.model, self.optimizer),
                "ema": {str(i): p for i, p in enumerate(self.ema.shadow_params)}}


class EMACounters:
    """The EMA's state but its weights, for the run state of a sharded run (its checkpoint's ``sharded`` files
    hold the weights)."""

    def __init__(self, ema: EMAModel):
        self.ema = ema

    def state_dict(self) -> dict:
        return {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict({**state, "shadow_params": self.ema.shadow_params})

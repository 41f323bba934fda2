"""Checkpoints that are either complete or ignored: written under a temporary name, renamed when done
(:mod:`film_diffusion.atomic`).

A checkpoint is Accelerate's ``save_state`` (model weights as safetensors, optimizer, RNG states) plus the
run's own state, written here without pickle: every tensor (the EMA weights, the generator state) in
``run_state.safetensors`` and every other value (step, log window, lr schedule, EMA counters) in
``run_state.json``. The same state is on every process, so the main process writes it, and last a manifest
of every file's checksum (:mod:`film_diffusion.integrity`), so that a damaged checkpoint is found before it is
loaded and ``--resume latest`` falls back to the newest intact one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.api import CheckpointException

from film_diffusion.atomic import discard, partial_path, publish, remove_folder
from film_diffusion.errors import DISK_FULL, UserError, first_line
from film_diffusion.integrity import verify, write_manifest
from film_diffusion.training.sharding import ShardedState

CHECKPOINTS = "checkpoints"
COMPLETE = re.compile(r"checkpoint-(\d+)")
DISK_FULL_WORDS = [f"os error {code}" for code in sorted(DISK_FULL)] + [os.strerror(code) for code in sorted(DISK_FULL)]
STATE_TENSORS = "run_state.safetensors"
STATE_VALUES = "run_state.json"

Stateful = Any
"""An object with ``state_dict()`` / ``load_state_dict()`` whose state is tensors, lists of tensors and JSON values."""


def checkpoint_dirs(run: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first; a ``.partial`` folder (a save cut short) is not one."""
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := COMPLETE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(accelerator: Accelerator, run: Path, step: int, keep: int | None,
                    state: Mapping[str, Stateful], sharded: ShardedState | None = None) -> Path:
    """Save under ``checkpoint-STEP.partial``, rename to ``checkpoint-STEP`` once every process has
    written and the manifest is complete, then drop the oldest complete ones beyond ``keep``. ``state``
    names the run's own objects; ``sharded``, a sharded run's model, optimizer and EMA weights, written in
    place of Accelerate's state. A full disk removes the partial folder and says so; older checkpoints stay."""
    final = run / CHECKPOINTS / f"checkpoint-{step}"
    partial = partial_path(final)
    try:
        if accelerator.is_main_process:
            discard(partial)  # a kill's leftover from an earlier try
        accelerator.wait_for_everyone()
        if accelerator.is_local_main_process:  # each node's: the folder may be shared by the nodes or not
            partial.mkdir(parents=True, exist_ok=True)  # before any process writes its RNG state into it
        accelerator.wait_for_everyone()
        if sharded is None:
            accelerator.save_state(str(partial), safe_serialization=True)
        else:
            sharded.save(partial)
        if accelerator.is_main_process:
            save_run_state(partial, state)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_manifest(partial)
            publish(partial, final)
    except (OSError, RuntimeError, SafetensorError, CheckpointException) as err:  # torch, safetensors and
        # torch.distributed.checkpoint (a BaseException holding each rank's error) wrap the OS's error
        shutil.rmtree(partial, ignore_errors=True)
        intact = checkpoint_dirs(run)
        kept = f"the newest intact checkpoint, '{intact[-1]}', is untouched" if intact else "no earlier checkpoint"
        if _disk_full(err):
            raise UserError(f"The disk is full: writing checkpoint '{final}' failed ({first_line(err)}) and was "
                            f"removed; {kept}. Free some space, then continue with --resume latest.") from None
        raise UserError(f"Writing checkpoint '{final}' failed ({first_line(err)}) and was removed; {kept}. Check the "
                        "disk (free space, quota, file-size limit), then continue with --resume latest.") from None
    if accelerator.is_main_process:
        complete = checkpoint_dirs(run)
        for old in complete[: max(0, len(complete) - keep)] if keep else []:
            remove_folder(old)
    accelerator.wait_for_everyone()
    return final


def _disk_full(err: BaseException) -> bool:
    """Whether a failed write ran out of room: the OS's error, or its words inside safetensors' own error."""
    return getattr(err, "errno", None) in DISK_FULL or any(words in str(err) for words in DISK_FULL_WORDS)


def save_run_state(folder: Path, state: Mapping[str, Stateful]) -> None:
    """Each object's state dict, split into tensors (safetensors) and the rest (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for name, obj in state.items():
        values[name] = _split(obj.state_dict(), f"{name}.", tensors)
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, folder / STATE_TENSORS)
    (folder / STATE_VALUES).write_text(json.dumps(values, indent=1))


def load_run_state(folder: Path, state: Mapping[str, Stateful], device: torch.device) -> None:
    """The inverse of :func:`save_run_state`, tensors back on ``device`` (a generator's state stays on the CPU)."""
    files = [folder / STATE_TENSORS, folder / STATE_VALUES]
    if not all(f.is_file() for f in files):
        raise UserError(f"Checkpoint '{folder}' has no {STATE_TENSORS} / {STATE_VALUES}; it was not written by this "
                        "version of film-diffusion or is damaged. Resume from another checkpoint.")
    tensors = load_file(folder / STATE_TENSORS)
    values = json.loads((folder / STATE_VALUES).read_text())
    for name, obj in state.items():
        obj.load_state_dict(_join(values[name], tensors, device))


_TENSOR = "__tensor__"


def _split(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON values as they are; each tensor replaced by a reference to its key in ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {_TENSOR: key}
    if isinstance(value, Mapping):
        return {k: _split(v, f"{key}{k}.", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{key}{i}.", tensors) for i, v in enumerate(value)]
    return value


def _join(value: Any, tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
    if isinstance(value, dict) and set(value) == {_TENSOR}:
        tensor = tensors[value[_TENSOR]]
        return tensor if tensor.dtype == torch.uint8 else tensor.to(device)  # generator states stay on the CPU
    if isinstance(value, dict):
        return {k: _join(v, tensors, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors, device) for v in value]
    return value


def resolve_resume(run: Path, resume: str | None) -> tuple[Path | None, list[str]]:
    """``latest``: the newest intact checkpoint of the run (None if there is none yet) and a sentence for each
    newer one that is damaged and passed over; a path: that checkpoint, which must be intact."""
    if resume is None:
        return None, []
    if resume == "latest":
        complete = checkpoint_dirs(run)
        skipped = []
        for path in reversed(complete):
            try:
                verify(path)
                return path, skipped
            except UserError as err:
                skipped.append(str(err))
        if complete:
            raise UserError(f"No checkpoint of '{run}' is intact ({len(complete)} damaged; the newest: {skipped[0]}); "
                            "restore one from a copy, or train into a new output_dir.")
        return None, []
    path = Path(resume)
    if not COMPLETE.fullmatch(path.name) or not path.is_dir():
        raise UserError(f"--resume '{resume}' is not a complete checkpoint folder (checkpoint-STEP); pass 'latest' "
                        "or one of the run's checkpoints/checkpoint-STEP folders.")
    verify(path)
    return path, []


def checkpoint_step(path: Path) -> int:
    return int(COMPLETE.fullmatch(path.name).group(1))

"""Checkpoints that are either complete or ignored: written under a temporary name, renamed when done.

A checkpoint is Accelerate's ``save_state`` (model weights as safetensors, optimizer, RNG states, and
every object registered for checkpointing: the EMA, the lr schedule, the run's step and generator).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from film_diffusion.errors import UserError

CHECKPOINTS = "checkpoints"
COMPLETE = re.compile(r"checkpoint-(\d+)")
PARTIAL_SUFFIX = ".partial"


def checkpoint_dirs(run: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first; a ``.partial`` folder (a save cut short) is not one."""
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := COMPLETE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(accelerator: Accelerator, run: Path, step: int, keep: int | None) -> Path:
    """Save under ``checkpoint-STEP.partial``, rename to ``checkpoint-STEP`` once every process has
    written, then drop the oldest complete ones beyond ``keep``."""
    final = run / CHECKPOINTS / f"checkpoint-{step}"
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    if accelerator.is_local_main_process:  # each node's (a multi-node run needs a shared file system)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)  # before any process writes its RNG state into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish(partial, final)
        complete = checkpoint_dirs(run)
        for old in complete[: max(0, len(complete) - keep)] if keep else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def publish(partial: Path, final: Path) -> None:
    """Give a completely written folder its final name. A folder already there (the same step saved by a
    run that was resumed and stopped again) is first moved aside, so that a kill at any moment leaves a
    complete folder under the final name or none."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    if old.exists():
        shutil.rmtree(old)


def resolve_resume(run: Path, resume: str | None) -> Path | None:
    """``latest``: the newest complete checkpoint of the run (None if there is none yet); a path: that one."""
    if resume is None:
        return None
    if resume == "latest":
        complete = checkpoint_dirs(run)
        return complete[-1] if complete else None
    path = Path(resume)
    if not COMPLETE.fullmatch(path.name) or not path.is_dir():
        raise UserError(f"--resume '{resume}' is not a complete checkpoint folder (checkpoint-STEP); pass 'latest' "
                        "or one of the run's checkpoints/checkpoint-STEP folders.")
    return path


def checkpoint_step(path: Path) -> int:
    return int(COMPLETE.fullmatch(path.name).group(1))

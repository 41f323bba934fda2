"""The run folder (``RUN/``): opening it, with the guards that keep one run from overwriting another; restoring a
checkpoint into the run's objects; and its files ``config.yaml`` and ``metrics.jsonl``, written so that a kill at
any moment loses nothing already logged."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from pickle import UnpicklingError

import yaml
from accelerate import Accelerator
from safetensors import SafetensorError
from torch.distributed.checkpoint.api import CheckpointException

from film_diffusion.atomic import clean_leftovers, write_text
from film_diffusion.config import config_to_dict
from film_diffusion.errors import UserError, first_line
from film_diffusion.training.checkpoints import CHECKPOINTS, Stateful, checkpoint_step, load_run_state, resolve_resume
from film_diffusion.training.config import ExperimentConfig
from film_diffusion.training.progress import RunProgress
from film_diffusion.training.sharding import ShardedState

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
WALL_CLOCK = ("images_per_s", "train_seconds")
"""The metrics rows' keys measured by the clock: all others are the same in every run of one config."""


def open_run(run: Path, resume: str | None, config: ExperimentConfig,
             accelerator: Accelerator) -> tuple[Path | None, bool]:
    """Check the folder before anything is built: clear what a kill left, find the checkpoint to resume from
    (``resume``: ``"latest"`` or a checkpoint folder), and refuse a folder that holds another run. Returns the
    checkpoint (or None) and whether a run stopped before its first checkpoint starts over."""
    if accelerator.is_main_process and (run / CONFIG).is_file():
        for leftover in clean_leftovers(run) + clean_leftovers(run / CHECKPOINTS):
            print(f"Removed {leftover}, left unfinished by an earlier stop.")
    accelerator.wait_for_everyone()
    start_from, damaged = resolve_resume(run, resume)
    restart = start_from is None and (run / CONFIG).exists()
    if restart:
        if not resume:
            raise UserError(f"output_dir '{run}' already holds a run; pass --resume latest, or choose another "
                            "output_dir.")
        if saved_config(run) not in (None, config_to_dict(config)):  # no checkpoint yet: the same run restarts
            raise UserError(f"output_dir '{run}' holds a run with no complete checkpoint yet, started with another "
                            "config; delete it to start over, or choose another output_dir.")
    if accelerator.is_main_process:
        for message in damaged:
            print(f"Passing over a damaged checkpoint: {message}")
    return start_from, restart


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, run_state: Mapping[str, Stateful],
                    sharded: ShardedState | None = None) -> None:
    """Accelerate's state (model, optimizer, RNG), or ``sharded``'s, and the run's own (``run_state``, its
    ``progress`` included) from ``checkpoint``; one sentence, and nothing loaded half-way counts, when it does
    not fit the run."""
    try:
        if sharded is None:
            accelerator.load_state(str(checkpoint))
        else:
            sharded.load(checkpoint)
        load_run_state(checkpoint, run_state, accelerator.device)
    except UnpicklingError:  # Accelerate reads its pickles with weights_only=True: nothing in them ran
        raise UserError(f"Checkpoint '{checkpoint}' holds a pickle that is not plain tensors (Accelerate's "
                        "optimizer or RNG state replaced or tampered with); it was refused, not run. Resume from "
                        "a checkpoint you trust, or train into a new output_dir.") from None
    except (RuntimeError, ValueError, KeyError, OSError, SafetensorError, CheckpointException) as err:
        raise UserError(f"Checkpoint '{checkpoint}' does not fit this run ({first_line(err)}); resume with the "
                        "config it was trained with, or train into a new output_dir.") from None
    progress: RunProgress = run_state["progress"]
    if progress.step != checkpoint_step(checkpoint):
        raise UserError(f"Checkpoint '{checkpoint}' records step {progress.step}, not its name's; it is damaged.")


def start_writing(run: Path, config: ExperimentConfig, accelerator: Accelerator, step: int,
                  resumed_from: Path | None, restart: bool) -> None:
    """The first writes of a run, once the checkpoint (if any) fitted: a refused resume leaves all as it was.
    Metrics rows logged after the checkpoint are dropped (they will be logged again), ``config.yaml`` is written
    whole, and TensorBoard drops its events after the checkpoint too."""
    if accelerator.is_main_process and (resumed_from or restart):
        truncate_metrics(run / METRICS, step)
        print(f"Resuming from {resumed_from} at step {step}." if resumed_from else
              f"No complete checkpoint in '{run}' yet: starting it over from step 0.")
    accelerator.wait_for_everyone()  # every process has checked the folder and loaded before a file is written
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        write_text(run / CONFIG, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    accelerator.init_trackers("film-diffusion", init_kwargs={"tensorboard": {"purge_step": step + 1}})


def log_metrics(run: Path, accelerator: Accelerator, row: dict) -> None:
    """One row to the trackers (TensorBoard) and to ``metrics.jsonl``; a None value is left out of the trackers."""
    accelerator.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=row["step"])
    if accelerator.is_main_process:
        with open(run / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` and a last row that a kill cut short; the file is replaced whole, so a kill
    here loses nothing."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if _logged_by(line, step)]
        write_text(path, "".join(line + "\n" for line in kept))


def _logged_by(line: str, step: int) -> bool:
    """Whether a metrics row was logged at ``step`` or before; a row a kill cut short was not logged."""
    try:
        return json.loads(line)["step"] <= step
    except (ValueError, KeyError, TypeError):
        return False


def saved_config(run: Path) -> dict | None:
    """The config a run folder was started with; None if a kill tore it (before it was written whole)."""
    try:
        return yaml.safe_load((run / CONFIG).read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return None

"""The kill storm: `film-diffusion train` on a tiny built-in config, killed with SIGKILL at seeded random
moments (every third one aimed at a checkpoint being written) and resumed with ``--resume latest`` each time,
then compared with the same run left alone."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from runs import metric_rows, tiny_config
from safetensors.torch import load_file

from film_diffusion.config import config_to_dict
from film_diffusion.training.checkpoints import checkpoint_dirs, checkpoint_step

# A run long enough that 20 kills, each at most 3 s past the moment the uninterrupted run wrote its first
# checkpoint (about 4 s after its start on a fast 2-core machine, most of it importing; 10 s or more on a slow one),
# cannot finish it (the tiny model takes about 150 steps a second on 2 fast cores); a checkpoint every tenth of a
# second or so, grids and log rows in between, two checkpoints kept (so old ones are deleted too).
STORM = ["data.length=96", "train.max_steps=8000", "train.checkpoint_every=20", "train.checkpoints_total_limit=2",
         "train.log_every=5", "train.sample_every=500", "train.eval_every=0", "train.warmup_steps=20"]
LEFTOVER_SUFFIXES = (".partial", ".old", ".deleting")


@dataclass
class Storm:
    kills: int = 0
    kills_while_writing: int = 0  # a .partial folder or file was on disk at the moment of the kill
    steps_at_kills: list[int] = field(default_factory=list)  # the newest complete checkpoint after each kill
    differences: list[str] = field(default_factory=list)  # what differs from the uninterrupted run
    leftovers: list[str] = field(default_factory=list)
    seconds: float = 0.0


def write_config(folder: Path, name: str, *overrides: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(tiny_config(folder / name, *STORM, *overrides))))
    return path


def train_command(config: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "film_diffusion.cli", "train", str(config), *(["--resume", "latest"] if resume
                                                                                  else [])]


def writing(run: Path, since: float) -> bool:
    """Whether a write that publishes by renaming (a checkpoint, the pipeline, the config, the log) is under way:
    a ``.partial`` made after ``since`` (a kill's leftovers stay until the next start clears them)."""
    places = [run, run / "checkpoints"]
    return any(p.name.endswith(".partial") and p.stat().st_mtime > since
               for place in places if place.is_dir() for p in place.iterdir())


def newest_step(run: Path) -> int:
    complete = checkpoint_dirs(run)
    return checkpoint_step(complete[-1]) if complete else 0


def seconds_to_first_checkpoint(config: Path, run: Path) -> float:
    """Run the uninterrupted training to its end; return how long after its start its first checkpoint was
    complete: the machine's own startup time, which the kills are timed from."""
    log = run.with_suffix(".log")
    with open(log, "w") as out:
        started = time.monotonic()
        process = subprocess.Popen(train_command(config, resume=False), stdout=out, stderr=out)
        first = None
        while process.poll() is None:
            if first is None and checkpoint_dirs(run):
                first = time.monotonic() - started
            time.sleep(0.01)
    if process.returncode:
        raise RuntimeError(f"the uninterrupted run failed (exit {process.returncode}); see {log}")
    return first if first is not None else time.monotonic() - started


def kill_storm(folder: Path, kills: int = 20, seed: int = 0, overrides: tuple[str, ...] = ()) -> Storm:
    rng, storm, start = random.Random(seed), Storm(), time.perf_counter()
    whole = write_config(folder, "whole", *overrides)
    first = seconds_to_first_checkpoint(whole, folder / "whole")
    config, run = write_config(folder, "killed", *overrides), folder / "killed"
    log = open(folder / "killed.log", "w")  # every attempt writes into it
    while storm.kills < kills:
        started = time.time()
        process = subprocess.Popen(train_command(config, resume=run.exists()), stdout=log, stderr=log)
        aimed = storm.kills % 3 == 2
        # half the startup to 3 s past the first checkpoint: some kills before it, most during training
        deadline = time.monotonic() + (first + 15.0 if aimed else rng.uniform(first / 2, first + 3.0))
        while time.monotonic() < deadline and process.poll() is None:
            if aimed and writing(run, started):
                time.sleep(rng.uniform(0.0, 0.002))  # somewhere inside the write (a few ms long)
                break
            time.sleep(0.002 if aimed else 0.05)
        if process.poll() is not None:
            raise RuntimeError(f"the run ended by itself (exit {process.returncode}) after {storm.kills} kills; "
                               "lengthen STORM's train.max_steps")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        storm.kills += 1
        storm.kills_while_writing += writing(run, started)
        storm.steps_at_kills.append(newest_step(run))
    done = subprocess.run(train_command(config, resume=True), stdout=log, stderr=log)
    log.close()
    if done.returncode:
        raise RuntimeError(f"the last resume failed (exit {done.returncode}); see {folder / 'killed.log'}")
    storm.differences = differences(folder / "whole", run)
    storm.leftovers = [str(p) for p in run.rglob("*") if p.name.endswith(LEFTOVER_SUFFIXES)]
    storm.seconds = time.perf_counter() - start
    return storm


def final_state(run: Path) -> dict:
    checkpoint = checkpoint_dirs(run)[-1]
    values = json.loads((checkpoint / "run_state.json").read_text())
    values["progress"].pop("seconds")  # the clock differs between runs
    return {
        "checkpoints": [p.name for p in sorted((run / "checkpoints").iterdir())],
        "weights": load_file(checkpoint / "model.safetensors"),
        "optimizer": torch.load(checkpoint / "optimizer.bin", weights_only=True),
        "ema and generator": load_file(checkpoint / "run_state.safetensors"),
        "step, lr schedule, EMA counters": values,
        "metrics rows": metric_rows(run),
        "pipeline weights": load_file(run / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors"),
        "sample grids": {p.name: p.read_bytes() for p in sorted((run / "samples").iterdir())},
    }


def differences(a: Path, b: Path) -> list[str]:
    """Each part of the final state that is not bit-identical between two runs, by name."""
    first, second = final_state(a), final_state(b)
    return [name for name in first if not same(first[name], second[name])]


def same(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(map(same, x, y))
    return x == y

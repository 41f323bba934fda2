"""Tiny training runs for the trainer tests: small models, batches and scenes, no sample grids."""

from __future__ import annotations

import json
from pathlib import Path

from film_diffusion.training.config import ExperimentConfig, load_experiment
from film_diffusion.training.run_folder import WALL_CLOCK
from film_diffusion.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

TINY = ["model.dit.hidden_size=32", "model.dit.depth=2", "model.dit.num_heads=4",
        "model.unet.block_out_channels=[16,32]", "model.unet.num_heads=2", "model.unet.norm_num_groups=8",
        "data.resolution=16", "data.length=24", "train.batch_size=4", "train.sample_every=0", "train.warmup_steps=2",
        "sample.steps=2", "sample.per_caption=1", "train.log_every=1",
        # what the tests were written against, whatever the quickstart's tuned defaults
        "model.dit.patch_size=2", "model.conditioning=[film]", "objective.prediction=epsilon",
        "objective.min_snr_gamma=null", "train.mixed_precision=no", "train.checkpoint_every=100"]


def tiny_config(output_dir: Path, *overrides: str, source: str | Path | dict | None = None) -> ExperimentConfig:
    return load_experiment(source or {}, [*TINY, f"output_dir={output_dir}", *overrides])


def tiny_run(output_dir: Path, *overrides: str, resume: str | None = None) -> Path:
    return train(tiny_config(output_dir, *overrides), resume=resume)


def metric_rows(run: Path) -> list[dict]:
    """A run's metrics.jsonl rows without the wall-clock columns: what two runs of one config must share."""
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_error_line(capsys, command: str) -> str:
    """The one line a failed ``film-diffusion COMMAND`` printed to stderr (asserting it is one, and an error)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"film-diffusion {command}: error: "), err
    return err[0]

"""``film-diffusion compare``: a matrix of training runs under one budget, each through the real trainer, then one
report (see :mod:`film_diffusion.studies.report`).

A compare config names the experiment every run starts from (``base``, a YAML file, then ``experiment``, keys
that differ from it) and a ``matrix``: experiment keys, each with a list of values; the runs are every
combination, in the order the matrix lists them. Every run therefore has the same data order, seeds, steps,
batch and precision, except where the matrix varies them. Runs go one after another, each in its own process
(``RUN/`` under ``OUTPUT/runs/``), so each one's speed and memory are its own. Each run is trained, scored
(``evaluate``), measured and kept as a record (:mod:`.records`, under ``REPORT/runs/``) before the next one starts,
and the report is made from the records. The comparison resumes run by run: a kept run is never trained again, nor
is a finished one (its ``pipeline/`` written); an interrupted one continues from its newest complete checkpoint.
The same command in several processes (one per GPU, or per CPU core at one thread each) shares the runs: each takes
the next run that no other holds (:mod:`.locks`), and each writes the report once every run is kept.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from film_diffusion.atomic import write_text
from film_diffusion.conditioning import Condition
from film_diffusion.config import ConfigError, config_to_dict
from film_diffusion.errors import UserError
from film_diffusion.studies.locks import holding, passed_on
from film_diffusion.studies.model_cost import matched_width, model_size
from film_diffusion.studies.plan import (
    CompareConfig,
    PlannedRun,
    experiment_source,
    flatten,
    load_compare,
    plan_runs,
    yaml_value,
)
from film_diffusion.studies.records import is_kept, keep
from film_diffusion.studies.report import measure_run, write_report
from film_diffusion.studies.suite_report import score_run
from film_diffusion.training.build import build_encoder
from film_diffusion.training.config import ExperimentConfig, load_experiment


class ModelInputs:
    """Per condition config, the encoder's widths and one encoded caption: what building and measuring a
    run's denoiser needs, loaded once for all the runs that share an encoder."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[dict, Condition | None]] = {}

    def __call__(self, config: ExperimentConfig) -> tuple[dict, Condition | None]:
        key = yaml.safe_dump(config_to_dict(config.condition))
        if key not in self._found:
            encoder = build_encoder(config.condition)
            condition = None if encoder is None else encoder.encode(config.sample.captions[:1])
            dims = dict(token_dim=getattr(encoder, "token_dim", None), pooled_dim=getattr(encoder, "pooled_dim", None),
                        max_length=getattr(encoder, "max_length", None))
            self._found[key] = (dims, condition)
        dims, condition = self._found[key]
        return {**dims, "channels": 3, "size": config.data.resolution}, condition


def check_models(runs: list[PlannedRun], inputs: ModelInputs) -> None:
    """Build every run's denoiser once, so that a method or size the backbone refuses stops the comparison
    before anything trains."""
    for run in runs:
        if run.config.vae.name_or_path is not None:
            continue  # a latent model's widths come from its VAE; its training run checks it
        try:
            model_size(run.config, *inputs(run.config), "params")
        except UserError as err:
            raise ConfigError(f"Run '{run.name}' of the matrix: {err}") from None


def size_runs(runs: list[PlannedRun], measure: str, inputs: ModelInputs, match_to: int | None = None
              ) -> dict[str, dict]:
    """Give every run the backbone width that brings it closest in ``measure`` (``params`` or ``flops``) to
    ``match_to``, or else to the first run of its backbone; returns, per run, the reference, the target, the size
    reached and the width. The runs' configs and overrides are updated in place."""
    targets: dict[str, tuple[str, int]] = {}
    sizing = {}
    for run in runs:
        config = run.config
        if config.vae.name_or_path is not None:
            raise ConfigError("Config key 'match' sizes pixel-space models; set it to none for a latent (VAE) "
                              "experiment.")
        dims, condition = inputs(config)
        backbone = config.model.backbone
        if backbone not in targets:
            targets[backbone] = (f"match_to: {match_to}", match_to) if match_to is not None else \
                (run.name, model_size(config, dims, condition, measure))
        reference, target = targets[backbone]
        width_key, width, size = matched_width(config, target, dims, condition, measure)
        override = f"{width_key}={yaml_value(width)}"
        run.overrides.append(override)
        run.config = load_experiment(config_to_dict(config), [override])
        sizing[run.name] = {"reference": reference, "target": target, "size": size, "width": width}
    return sizing


def run_all(runs: list[PlannedRun], config: CompareConfig, source_file: Path) -> None:
    """Complete every run not kept yet, one after another. Several ``compare`` processes of one config (other
    shells, or machines that share the folders) share the runs: each passes over a run another one holds, and at the
    end waits for those, completing any that its holder left unfinished (killed, say)."""
    held_elsewhere = []
    for i, run in enumerate(runs, 1):
        counter = f"[{i}/{len(runs)}] "
        with holding(run_lock(run, config), wait=False) as lock:
            if lock is not None:
                complete(run, config, source_file, counter, lock)
            else:
                print(f"{counter}{run.name}: held by another compare process; going on", flush=True)
                held_elsewhere.append((counter, run))
    for counter, run in held_elsewhere:
        with holding(run_lock(run, config), wait=True) as lock:
            complete(run, config, source_file, counter, lock)


def run_lock(run: PlannedRun, config: CompareConfig) -> Path:
    """The file whose lock marks ``run`` as held by one ``compare`` process."""
    return config.output_dir / "locks" / f"{run.name}.lock"


def complete(run: PlannedRun, config: CompareConfig, source_file: Path, counter: str, lock: int | None) -> None:
    """Train one run (resuming where a checkpoint is complete), score it, measure it, keep its record; a kept run
    is left as it is. ``lock``: the descriptor of the run's held lock, which its training process inherits."""
    if is_kept(run, config):
        check_same_experiment(run, run.record)
        print(f"{counter}{run.name}: kept in {run.record}, not trained again")
        return
    check_same_experiment(run, run.folder)
    if run.finished:
        print(f"{counter}{run.name}: finished, not trained again")
    else:
        train(run, source_file, config.launcher, counter, lock)
    if config.evaluate is not None:
        score_run(run, config.evaluate)
    measure_run(run, config.grid_seed)
    keep(run, config)


def train(run: PlannedRun, source_file: Path, launcher: list[str], counter: str = "", lock: int | None = None
          ) -> None:
    """One run's training, in its own process, resuming where a checkpoint is complete."""
    resume = run.folder.exists()  # the trainer restarts a run stopped before its first checkpoint
    print(f"{counter}{run.name}: {'resuming' if resume else 'training'}", flush=True)
    command = [*(launcher or [sys.executable]), "-m", "film_diffusion.cli", "train", str(source_file),
               *run.overrides, f"output_dir={run.folder}", *(["--resume", "latest"] if resume else [])]
    launch(command, run.name, lock)


def launch(command: list[str], name: str, lock: int | None = None) -> None:
    """One training, in its own process; a failure stops the comparison (finished runs stay finished). The process
    inherits ``lock`` (a held lock's descriptor), so that its run stays held while it trains even if this process is
    killed alone."""
    try:
        code = subprocess.run(command, pass_fds=passed_on(lock)).returncode
    except OSError as err:
        raise UserError(f"Could not start run '{name}' with '{command[0]}' ({err.strerror}); fix the config key "
                        "'launcher' (or leave it empty for this Python).") from None
    if code:
        raise UserError(f"Run '{name}' failed (exit code {code}; its error is printed above); fix it and run the "
                        "same compare command again: finished runs are kept.")


def check_same_experiment(run: PlannedRun, folder: Path) -> None:
    """A run folder or record left by an earlier sitting must hold the experiment the matrix now asks for. A key
    its config lacks (added to film-diffusion since) counts at its default, which keeps the behaviour from before
    the key."""
    saved = folder / "config.yaml"
    if not saved.is_file():
        return
    try:
        before = yaml.safe_load(saved.read_text())
    except yaml.YAMLError:
        before = None
    if not isinstance(before, dict):  # torn by a kill before it was whole: no checkpoint can follow it
        return
    before, now = flatten(before), flatten(config_to_dict(run.config))
    defaults = flatten(config_to_dict(ExperimentConfig()))
    changed = [k for k in now if before.get(k, defaults.get(k)) != now[k]]
    if changed:
        key = changed[0]
        raise UserError(f"'{folder}' holds run '{run.name}' trained with another config ({key} was "
                        f"{before.get(key)!r}, now {now[key]!r}); restore the compare config, or choose another "
                        "output_dir (and report_dir).")


def prepare(config: CompareConfig) -> tuple[list[PlannedRun], dict[str, dict]]:
    """The runs, every one checked to build, and sized when ``match`` asks (with the sizing per run)."""
    runs = plan_runs(config)
    inputs = ModelInputs()
    check_models(runs, inputs)
    return runs, size_runs(runs, config.match, inputs, config.match_to) if config.match != "none" else {}


def compare(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Plan, size, complete every run not kept yet (train, score with ``evaluate``, measure, keep), then write the
    report; returns the report's folder."""
    config = load_compare(path, overrides)
    runs, sizing = prepare(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    source_file = out / "experiment.yaml"
    comparison_lock = out / "locks" / "comparison.lock"
    with holding(comparison_lock, wait=True):  # another process may be writing them too
        write_text(source_file, yaml.safe_dump(experiment_source(config), sort_keys=False))
        write_text(out / "compare.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    run_all(runs, config, source_file)
    report = Path(config.report_dir or out)
    report.mkdir(parents=True, exist_ok=True)
    with holding(comparison_lock, wait=True):
        return write_report(report, runs, config, sizing)

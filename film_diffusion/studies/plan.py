"""A comparison's plan: its config (``CompareConfig``) and the runs its matrix expands to (``PlannedRun``),
each checked as an experiment config before anything trains. Both the runner (:mod:`.compare`) and the report
(:mod:`.report`) read it."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from film_diffusion.config import ConfigError, load_config, read_yaml_mapping
from film_diffusion.training.config import ExperimentConfig, load_experiment


@dataclass
class SuiteScoring:
    """How ``compare`` scores each finished run with the benchmark suite (``film-diffusion evaluate``)."""

    suite: str = "full"
    split: Literal["val", "test"] = "test"  # val to tune a study's settings, test for the figures it reports
    samples: int = 200  # images per category
    seed: int = 0  # the noise seed of every image
    batch_size: int = 50
    steps: int | None = None  # sampling steps; null: the run's pipeline default (sample.steps)
    guidance_scale: float | None = None  # null: the run's pipeline default (sample.guidance_scale)


@dataclass
class CompareConfig:
    output_dir: Path = Path("runs/compare")
    base: Path | None = None  # an experiment YAML every run starts from (relative to this file); null: the defaults
    experiment: dict[str, Any] = field(default_factory=dict)  # experiment keys set for every run, over base
    matrix: dict[str, Any] = field(default_factory=dict)  # experiment key (dotted) -> list of values
    match: Literal["none", "params", "flops"] = "none"  # size each run's backbone width to a common count
    match_to: int | None = None  # that count, the same for every backbone; null: each backbone's first run
    launcher: list[str] = field(default_factory=list)  # runs each training, e.g. [accelerate, launch]; [] = python
    grid_seed: int = 0  # the initial noise of the side-by-side grid
    report_dir: Path | None = None  # where results.md, results.json, the plots and the grid go; null: output_dir
    exclude: list[dict[str, Any]] = field(default_factory=list)  # matrix cells not to run, e.g. a method a
    # backbone refuses: [{model.backbone: unet, model.conditioning: [joint_attention]}]
    evaluate: SuiteScoring | None = None  # score every run with the benchmark suite; null: training-time scores only


@dataclass
class PlannedRun:
    """One cell of the matrix: its name, its matrix values, the experiment it trains and where its record is kept
    (:mod:`.records`)."""

    name: str
    values: dict[str, Any]
    overrides: list[str]
    config: ExperimentConfig
    record: Path

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def finished(self) -> bool:
        return (self.folder / "pipeline" / "model_index.json").is_file()


def load_compare(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CompareConfig:
    """The compare config with its overrides; ``base`` resolved against the file's folder."""
    config = load_config(path, CompareConfig, overrides)
    config.matrix = flatten(config.matrix)
    if config.base is not None and not config.base.is_absolute():
        config.base = Path(path).resolve().parent / config.base
    if not config.matrix:
        raise ConfigError("Config key 'matrix' is empty; list at least one experiment key with its values, e.g. "
                          "matrix: {model.conditioning: [[film], [adaln_zero]]}.")
    for key, values in config.matrix.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"Config key 'matrix.{key}' must be a non-empty list of values, got {values!r}.")
        if key == "output_dir":
            raise ConfigError("Config key 'matrix.output_dir' cannot vary: each run's folder is named from its values.")
    if config.match_to is not None and (config.match == "none" or config.match_to < 1):
        raise ConfigError(f"Config key 'match_to' is {config.match_to}; it is a positive count of the 'match' measure, "
                          "so set match to params or flops (or remove match_to).")
    config.exclude = [flatten(entry) if isinstance(entry, dict) else entry for entry in config.exclude]
    for i, entry in enumerate(config.exclude):
        unknown = [k for k in entry if k not in config.matrix] if isinstance(entry, dict) else None
        if not entry or unknown:
            what = f"names '{unknown[0]}', which is not a matrix key" if unknown else "must be a mapping of matrix keys"
            raise ConfigError(f"Config key 'exclude[{i}]' {what}; give each entry matrix keys with one value each.")
        absent = [k for k, v in entry.items() if v not in config.matrix[k]]
        if absent:
            raise ConfigError(f"Config key 'exclude[{i}].{absent[0]}' is {entry[absent[0]]!r}, which the matrix does "
                              "not list; copy the value from the matrix.")
    return config


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys: ``{model: {backbone: [...]}}`` and ``{model.backbone: [...]}`` are the
    same matrix."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def experiment_source(config: CompareConfig) -> dict:
    """The experiment every run starts from: ``base`` with ``experiment`` merged over it."""
    base = {}
    if config.base is not None:
        if not config.base.is_file():
            raise ConfigError(f"Config key 'base' is '{config.base}', which is not a file; name an experiment YAML.")
        base = read_yaml_mapping(config.base, f"Config key 'base': '{config.base}'")
    return _merge(base, config.experiment)


def plan_runs(config: CompareConfig) -> list[PlannedRun]:
    """Every combination of the matrix values, checked as an experiment config before anything trains."""
    source = experiment_source(config)
    keys = list(config.matrix)
    runs = []
    for combination in itertools.product(*config.matrix.values()):
        values = dict(zip(keys, combination, strict=True))
        if any(all(values[k] == v for k, v in entry.items()) for entry in config.exclude):
            continue
        name = run_name(values)
        overrides = [f"{k}={yaml_value(v)}" for k, v in values.items()]
        try:
            experiment = load_experiment(source, [*overrides, f"output_dir={config.output_dir / 'runs' / name}"])
        except ConfigError as err:
            raise ConfigError(f"Run '{name}' of the matrix: {err}") from None
        record = (config.report_dir or config.output_dir) / "runs" / name
        runs.append(PlannedRun(name, values, overrides, experiment, record))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("Two matrix cells get the same run name; make the values of each matrix key distinct.")
    return runs


def run_name(values: dict[str, Any]) -> str:
    """A folder name from the matrix values: ``conditioning=film+cross_attention_backbone=dit_seed=0``."""
    return "_".join(value_pairs(values)).replace("/", "-")


def value_label(value: Any) -> str:
    """A short label of a matrix value: lists join with ``+``, a method with options reads
    ``film(placement=after_residual)``."""
    if isinstance(value, list):
        return "+".join(value_label(v) for v in value)
    if isinstance(value, dict):
        options = ",".join(f"{k}={value_label(v)}" for k, v in value.items() if k != "name")
        return f"{value.get('name', '')}({options})" if "name" in value else options
    return str(value)


def value_pairs(values: dict[str, Any]) -> list[str]:
    """``name=label`` for each matrix value, by the key's last part: ``conditioning=film+cross_attention``."""
    return [f"{key.rsplit('.', 1)[-1]}={value_label(v)}" for key, v in values.items()]


def yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()



def _merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


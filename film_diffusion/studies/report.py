"""The comparison's report, made only from the runs' own files: ``results.json`` and ``results.md`` (a row per run,
mean and spread over seeds, method x backbone), plots of the loss and of every quality metric against step and
against training seconds, and one grid of every run's samples from the same captions and noise; with ``evaluate``
set, the benchmark suite's section too (:mod:`.suite_report`).

Per run, what needs the model (parameters, FLOPs, the peak memory of a training step, the grid's images) is
measured once from its saved pipeline (``measure_run``) into ``RUN/compare_measures.json`` and
``RUN/compare_samples/``; the report itself reads only the runs' records (:mod:`.records`).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from film_diffusion.atomic import write_text
from film_diffusion.errors import UserError
from film_diffusion.grid import labelled_grid
from film_diffusion.sample import load_pipeline
from film_diffusion.studies.model_cost import example_inputs, forward_flops, parameter_counts, training_peak_memory
from film_diffusion.studies.plan import CompareConfig, PlannedRun, value_label, value_pairs
from film_diffusion.studies.plots import BACKBONE_KEY, SEED_KEY, plot_curves
from film_diffusion.studies.records import MEASURES, SAMPLES
from film_diffusion.studies.suite_report import prompts_of, suite_columns, suite_grids, suite_markdown, suite_plot
from film_diffusion.studies.tables import format_number, markdown_row
from film_diffusion.training.config import ExperimentConfig

# Quality metrics in the order the tables show them, with their column titles; a run has the ones its
# condition states (text: all attributes; class labels: colour and shape).
METRICS = {"color": "colour", "shape": "shape", "size": "size", "position": "position", "all": "all",
           "color_and_shape": "colour+shape", "fid": "FID", "kid": "KID", "clip_score": "CLIP"}
# Columns that are not quality metrics, with their titles.
OTHER_COLUMNS = {"images_per_s": "img/s", "final_loss": "final loss", "params": "params", "flops": "FLOPs"}
LOWER_IS_BETTER = {"fid", "kid", "final_loss"}


def measure_run(run: PlannedRun, grid_seed: int) -> dict[str, Any]:
    """Parameters, FLOPs of one forward pass and the peak memory of one training step of the run's final
    model, and its grid row (one image per ``sample.captions`` or ``sample.class_labels`` entry, noise from
    ``grid_seed``); measured once and kept in the run folder."""
    cached = run.folder / MEASURES
    if cached.is_file():
        measures = json.loads(cached.read_text())
        if measures.get("grid_seed") == grid_seed:
            return measures
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(run.folder / "pipeline").to(device)  # checked: a damaged folder is one sentence
    config = run.config
    text = pipe.text_encoder is not None
    condition = pipe.text_encoder.encode(config.sample.captions[:1]) if text else None
    denoiser = pipe.denoiser
    micro = config.train.batch_size // config.train.gradient_accumulation_steps
    measures = {**parameter_counts(denoiser), "flops": forward_flops(denoiser, example_inputs(denoiser, condition,
                                                                                                device=device)),
                "peak_memory_mb": training_peak_memory(denoiser, example_inputs(denoiser, condition, micro, device),
                                                       config.train.mixed_precision,
                                                       config.train.gradient_checkpointing) / 2**20,
                "device": device, "grid_seed": grid_seed}
    pipe.set_progress_bar_config(disable=True)
    inputs = {"prompt": config.sample.captions} if text else {"class_labels": config.sample.class_labels}
    images = pipe(**inputs, num_inference_steps=config.sample.steps, guidance_scale=config.sample.guidance_scale,
                  generator=torch.Generator(device).manual_seed(grid_seed)).images
    (run.folder / SAMPLES).mkdir(exist_ok=True)
    for i, image in enumerate(images):
        image.save(run.folder / SAMPLES / f"{i:02d}.png")
    write_text(cached, json.dumps(measures, indent=1) + "\n")  # never a torn file
    return measures


def read_metrics(run: PlannedRun) -> list[dict]:
    """The ``metrics.jsonl`` rows of the run's record."""
    return [json.loads(line) for line in (run.record / "metrics.jsonl").read_text().splitlines() if line]


def run_row(run: PlannedRun, rows: list[dict], measures: dict, sizing: dict | None) -> dict[str, Any]:
    """A run's row: its matrix values, size, cost, speed, final loss and final scores, from its metrics ``rows``
    and ``measures``."""
    losses = [r for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("eval") for k in r)]
    if not losses or "train_seconds" not in losses[-1]:
        raise UserError(f"Run '{run.folder}' logged no training seconds (trained before film-diffusion logged them, "
                        "or it logged no step); train it again in a new output_dir.")
    last = losses[-1]
    row = {"run": run.name, **{k: value_label(v) for k, v in run.values.items()}, **measures,
           "width": None if sizing is None else sizing["width"],
           "size_target": None if sizing is None else sizing["target"],
           "size_reached": None if sizing is None else sizing["size"],
           "images_per_s": run.config.train.batch_size * last["step"] / last["train_seconds"],
           "train_seconds": last["train_seconds"], "steps": last["step"], "final_loss": last["loss"]}
    if evals:
        row |= {k: v for k, v in evals[-1].items() if k.startswith("eval")}
    return row


def group_rows(rows: list[dict], keys: list[str]) -> list[dict]:
    """Runs that differ only in ``seed``: the mean and the sample standard deviation of every number (0 for a
    single run), with ``n``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys if k != SEED_KEY)].append(row)
    out = []
    for values, members in groups.items():
        summary: dict[str, Any] = dict(zip([k for k in keys if k != SEED_KEY], values, strict=True))
        summary["n"] = len(members)
        numbers = [k for k, v in members[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for key in numbers:
            found = [m[key] for m in members if m.get(key) is not None]
            if found:
                summary[key] = statistics.fmean(found)
                if len(found) > 1:  # one seed has no spread to report, not a spread of zero
                    summary[f"{key}_std"] = statistics.stdev(found)
        out.append(summary)
    return out


def write_report(out: Path, runs: list[PlannedRun], config: CompareConfig, sizing: dict[str, dict]) -> Path:
    """Write results.json, results.md, the plots and the grid from the runs' records."""
    keys = list(config.matrix)
    measures = {run.name: json.loads((run.record / MEASURES).read_text()) for run in runs}
    curves = {run.name: read_metrics(run) for run in runs}
    rows = [run_row(run, curves[run.name], measures[run.name], sizing.get(run.name)) for run in runs]
    scoring = config.evaluate
    if scoring is not None:
        for run, row in zip(runs, rows, strict=True):
            row |= suite_columns(run, scoring)
    groups = group_rows(rows, keys)
    quality = metric_keys(rows)
    plots = plot_curves(out, rows, curves, keys, quality, {k: column_title(k) for k in quality})
    grid = side_by_side_grid(runs)
    grid.save(out / "samples.png")
    suite = []
    if scoring is not None:
        bars, grids = suite_plot(out, groups, keys, rows), suite_grids(out, runs, scoring, rows)
        suite = suite_markdown(groups, keys, scoring, rows, grids, bars, prompts_of(runs[0], scoring))
        plots += [bars, *grids]
    results = {"matrix": config.matrix, "exclude": config.exclude, "match": config.match, "sizing": sizing,
               "runs": rows, "groups": groups, "plots": [p.name for p in plots], "grid": "samples.png"}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(rows, groups, keys, config, runs, [p for p in plots if
                                                                                 not p.stem.startswith("suite_")],
                                              suite))
    print(f"wrote {out / 'results.md'}, results.json, {len(plots)} plots and samples.png")
    return out


def side_by_side_grid(runs: list[PlannedRun]) -> Image.Image:
    """One row per run, one column per caption (or label): the same captions and noise in every row."""
    rows = [[Image.open(path).convert("RGB") for path in sorted((run.record / SAMPLES).glob("*.png"))]
            for run in runs]
    return labelled_grid(rows, [", ".join(value_pairs(run.values)) for run in runs])


def metric_keys(rows: list[dict]) -> list[str]:
    """The quality columns present: ``eval/...`` first, then the compositional split's ``eval_cogent/...``."""
    present = {k for row in rows for k in row}
    return [f"{prefix}/{m}" for prefix in ("eval", "eval_cogent") for m in METRICS if f"{prefix}/{m}" in present]


def headline(rows: list[dict]) -> str | None:
    """The metric the method x backbone table shows: all-correct for text, colour-and-shape for labels."""
    present = {k for row in rows for k in row}
    return next((k for k in ("eval/all", "eval/color_and_shape") if k in present), None)


def suite_column_name(key: str) -> str:
    """``suite/binding/right`` -> ``binding``, ``suite/binding/colors`` -> ``binding/colors``."""
    return key.removeprefix("suite/").removesuffix("/right")


def column_title(key: str) -> str:
    if key in OTHER_COLUMNS:
        return OTHER_COLUMNS[key]
    if key.startswith("suite/"):
        return suite_column_name(key)
    prefix, _, metric = key.partition("/")
    return f"{'CoGenT ' if prefix == 'eval_cogent' else ''}{METRICS[metric]}"


def seed_table(groups: list[dict], group_keys: list[str], columns: list[str]) -> list[str]:
    """Markdown lines: a row per group of seeds, its ``n``, then ``mean ± std`` of each column (the mean alone for
    a single seed)."""
    lines = [markdown_row([*(k.rsplit(".", 1)[-1] for k in group_keys), "n", *map(column_title, columns)]),
             markdown_row(["---"] * len(group_keys) + ["---:"] * (1 + len(columns)))]
    for g in groups:
        cells = ["" if k not in g else f"{format_number(g[k])} ± {format_number(g[f'{k}_std'])}"
                 if f"{k}_std" in g else format_number(g[k]) for k in columns]
        lines.append(markdown_row([*(str(g[k]) for k in group_keys), str(g["n"]), *cells]))
    return lines


def markdown(rows: list[dict], groups: list[dict], keys: list[str], config: CompareConfig, runs: list[PlannedRun],
             plots: list[Path], suite: list[str]) -> str:
    first = runs[0].config
    train = first.train
    precision = "float32" if train.mixed_precision == "no" else train.mixed_precision
    quality = metric_keys(rows)
    lines = [f"# Comparison: {config.output_dir}", "",
             f"Made by `film-diffusion compare` (its resolved config is `{config.output_dir}/compare.yaml`); every "
             f"figure below is read from the runs' files under `{config.output_dir}/runs/`. Every run, unless the "
             f"matrix varies it: "
             f"{train.max_steps} steps of batch {train.batch_size}, "
             f"{precision} precision, lr {train.lr:g}, data `{first.data.name}` at "
             f"{first.data.resolution} px, {_training_scores(first, bool(quality))}, "
             f"sampled with {first.sample.steps} steps at guidance {first.sample.guidance_scale:g}. Matrix: "
             + "; ".join(f"`{k}` in {len(v)} values" for k, v in config.matrix.items()) + ".", "",
             _sizing_sentence(config) + " Conditioning parameters are those of the conditioning stack (embedders, "
             "generators, cross-attention) but a method that carries the timestep alone; FLOPs are one forward "
             "pass of the denoiser at batch 1; peak memory is one training step at the run's batch per "
             "accumulation step (one process's share when a launcher runs several: divide by their count) and "
             "precision, without the EMA copy. A method that is the backbone's own timestep method (adaLN-Zero on "
             "the DiT, FiLM on the U-Net) carries the timestep too, so its whole generator counts. img/s is the "
             "trainer's own, logged beside whatever else the machine ran; to compare speeds, time the cells side by "
             "side on an idle machine with `python benchmarks/study_speed.py CONFIG` (it writes `speeds.md` here).",
             "",
             "## Runs", ""]
    columns = ["run", "width", "params (M)", "conditioning params (M)", "GFLOPs / forward", "img/s",
               "peak MiB (train step)", "final loss", *map(column_title, quality)]
    lines += [markdown_row(columns), markdown_row(["---"] + ["---:"] * (len(columns) - 1))]
    for row in rows:
        cells = [row["run"], _width(row), f"{row['params'] / 1e6:.3f}",
                 f"{row['params_conditioning'] / 1e6:.3f}", f"{row['flops'] / 1e9:.3g}", f"{row['images_per_s']:.1f}",
                 f"{row['peak_memory_mb']:.0f}", f"{row['final_loss']:.4f}",
                 *(format_number(row.get(k)) for k in quality)]
        lines.append(markdown_row(cells))
    group_keys = [k for k in keys if k != SEED_KEY]
    if any(g["n"] > 1 for g in groups):
        lines += ["", "## Mean and standard deviation over seeds", "",
                  *seed_table(groups, group_keys, ["final_loss", *quality])]
    best = headline(rows)
    if best and BACKBONE_KEY in keys and len(config.matrix[BACKBONE_KEY]) > 1:
        lines += ["", f"## {column_title(best)} by method and backbone (mean over seeds)", ""]
        backbones = [str(b) for b in config.matrix[BACKBONE_KEY]]
        methods = [k for k in group_keys if k != BACKBONE_KEY]
        table: dict[str, dict[str, str]] = defaultdict(dict)
        for g in groups:
            label = ", ".join(str(g[k]) for k in methods) or "all"
            table[label][str(g[BACKBONE_KEY])] = format_number(g.get(best))
        lines += [markdown_row(["method", *backbones]), markdown_row(["---"] + ["---:"] * len(backbones))]
        lines += [markdown_row([label, *(cells.get(b, "") for b in backbones)]) for label, cells in table.items()]
    lines += suite
    lines += ["", "## Curves", "", *(f"![{p.stem}]({p.name})" for p in plots), "", "## Samples", "",
              "Each row is one run; the columns are, in order: "
              + "; ".join(f"\"{c}\"" for c in (first.sample.captions if first.condition.source != "class_labels"
                                              else map(str, first.sample.class_labels)))
              + f" (the same initial noise in every row, seed {config.grid_seed}).", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def _training_scores(first: ExperimentConfig, scored: bool) -> str:
    """What the runs' own scoring during training was, and on which split."""
    if not scored:
        return "with no scoring during training (`train.eval_every: 0`)"
    return (f"scored during training on {first.eval.scenes} captions of the val split (held out; the split to tune "
            "on, not to report: `film-diffusion evaluate RUN --split test` scores a run on test)")


def _sizing_sentence(config: CompareConfig) -> str:
    if config.match == "none":
        return "Sizes: each run has the width its config gives (`match: none`); compare parameters and FLOPs below."
    to = f"{config.match_to:,}" if config.match_to is not None else "those of the first run of its backbone"
    return (f"Sizes: each run's backbone width (column `width`) was chosen to bring its {config.match} closest to "
            f"{to} (`match: {config.match}`).")


def _width(row: dict) -> str:
    """The matched width with the size it reached against its target, e.g. ``192 (5.15M of 5.75M)``."""
    if row["width"] is None:
        return ""
    reached, target = row["size_reached"], row["size_target"]
    return f"{value_label(row['width'])} ({reached / 1e6:.3g}M of {target / 1e6:.3g}M)"

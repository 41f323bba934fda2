"""The benchmark suite's part of a comparison (config key ``evaluate``): each finished run scored by
``film-diffusion evaluate`` (kept in ``RUN/evaluation/SUITE-SPLIT/``, never scored twice), then, in the report (read
from the runs' records, :mod:`.records`), a table per category (mean and spread over seeds, and the 95% Wilson
interval of the seeds' images pooled), a bar plot of every category, and a grid per category (each method's first
images of the same prompts and noise).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

from film_diffusion.benchmark import RESULTS, run_evaluate
from film_diffusion.errors import UserError
from film_diffusion.evaluation.metrics import wilson_interval
from film_diffusion.grid import labelled_grid
from film_diffusion.studies.plan import PlannedRun, SuiteScoring, value_pairs
from film_diffusion.studies.plots import BACKBONE_KEY, SEED_KEY
from film_diffusion.studies.tables import format_number, markdown_row

PREFIX = "suite"
COUNTS = "suite_n"  # right images and images per category: the seeds' sums give the pooled interval
GRID_COLUMNS = 8
SETTINGS = ("suite", "split", "samples_per_category", "seed")


def suite_folder(folder: Path, scoring: SuiteScoring) -> Path:
    """Where a run folder (or a run's record) keeps the suite's scores."""
    return folder / "evaluation" / f"{scoring.suite}-{scoring.split}"


def score_run(run: PlannedRun, scoring: SuiteScoring) -> None:
    """Score the run unless it is scored with these settings; a run scored with others is refused, not mixed in."""
    out = suite_folder(run.folder, scoring)
    if (out / RESULTS).is_file():
        check_settings(out, scoring)
        return
    print(f"{run.name}: scoring on the {scoring.split} split ({scoring.suite} suite)", flush=True)
    run_evaluate(run.folder / "pipeline", suite=scoring.suite, split=scoring.split, out=out, samples=scoring.samples,
                 seed=scoring.seed, batch_size=scoring.batch_size, steps=scoring.steps,
                 guidance_scale=scoring.guidance_scale)


def check_settings(out: Path, scoring: SuiteScoring) -> dict:
    """The scores in ``out``, refused when they were made with other settings than ``scoring`` asks."""
    results = json.loads((out / RESULTS).read_text())
    settings = results["settings"]
    wanted = {"suite": scoring.suite, "split": scoring.split, "samples_per_category": scoring.samples,
              "seed": scoring.seed}
    wanted |= {k: v for k, v in (("steps", scoring.steps), ("guidance_scale", scoring.guidance_scale)) if v is not None}
    changed = [k for k, v in wanted.items() if settings.get(k) != v]
    if changed:
        key = changed[0]
        raise UserError(f"'{out}' was scored with {key}={settings.get(key)!r}, not {wanted[key]!r} as the compare "
                        "config's evaluate asks; delete that folder to score again, or restore the setting.")
    return results


def suite_columns(run: PlannedRun, scoring: SuiteScoring) -> dict[str, Any]:
    """A run's suite scores as report columns: ``suite/CATEGORY/CHECK`` (accuracy), ``suite_n/CATEGORY/right`` and
    ``suite_n/CATEGORY/images`` (counts, for pooling seeds), and ``suite/overall/right``."""
    results = check_settings(suite_folder(run.record, scoring), scoring)
    summary, settings = results["summary"], results["settings"]
    columns: dict[str, Any] = {}
    for category, scores in summary["categories"].items():
        for check, value in scores.items():
            if check != "prompts":
                columns[f"{PREFIX}/{category}/{check}"] = value["accuracy"]
        columns[f"{COUNTS}/{category}/right"] = scores["right"]["right"]
        columns[f"{COUNTS}/{category}/images"] = scores["right"]["count"]
    overall = summary["overall"]
    columns |= {"suite_steps": settings["steps"], "suite_guidance_scale": settings["guidance_scale"],
                f"{PREFIX}/overall/right": overall["accuracy"], f"{COUNTS}/overall/right": overall["right"],
                f"{COUNTS}/overall/images": overall["count"]}
    return columns


def categories(rows: list[dict]) -> list[str]:
    """The categories scored, in the suite's order, ``overall`` last."""
    found = dict.fromkeys(k.split("/")[1] for row in rows for k in row if k.startswith(f"{PREFIX}/"))
    return [c for c in found if c != "overall"] + ["overall"]


def pooled(group: dict, category: str) -> tuple[int, int]:
    """Right images and images of a group of seeds, summed over the seeds (the group holds their means)."""
    n = group["n"]
    return round(group[f"{COUNTS}/{category}/right"] * n), round(group[f"{COUNTS}/{category}/images"] * n)


def suite_markdown(groups: list[dict], keys: list[str], scoring: SuiteScoring, rows: list[dict],
                   grids: list[Path], plot: Path, prompts: dict[str, list[str]]) -> list[str]:
    """The report's suite section: who is right how often in each category, then a table per category."""
    group_keys = [k for k in keys if k != SEED_KEY]
    names = categories(rows)
    first = next(iter(rows))
    lines = ["", f"## The benchmark suite, {scoring.split} split", "",
             f"Every run scored by `film-diffusion evaluate RUN --suite {scoring.suite} --split {scoring.split} "
             f"--samples {scoring.samples} --seed {scoring.seed}` ({first.get('suite_steps')} sampling steps at "
             f"guidance {first.get('suite_guidance_scale')}), kept in "
             f"`RUN/evaluation/{scoring.suite}-{scoring.split}/`. "
             "`right`: the oracle reads exactly the objects the prompt asks for. Cells give the mean over seeds ± "
             "their standard deviation, and the 95% Wilson interval of all seeds' images pooled; a difference inside "
             "the seeds' spread is not a finding.", "",
             "### Right, by category (mean over seeds)", "",
             markdown_row([*(k.rsplit(".", 1)[-1] for k in group_keys), "n", *names]),
             markdown_row(["---"] * len(group_keys) + ["---:"] * (1 + len(names)))]
    for g in groups:
        lines.append(markdown_row([*(str(g[k]) for k in group_keys), str(g["n"]),
                                   *(format_number(g.get(f"{PREFIX}/{c}/right")) for c in names)]))
    lines += ["", f"![right by category]({plot.name})"]
    for category in names:
        checks = [k.split("/")[2] for k in groups[0] if k.startswith(f"{PREFIX}/{category}/")
                  and k.count("/") == 2 and not k.endswith(("_std", "/right"))]
        lines += ["", f"### {category}", "",
                  markdown_row([*(k.rsplit(".", 1)[-1] for k in group_keys), "n", "right", "95% interval (pooled)",
                                *checks]),
                  markdown_row(["---"] * len(group_keys) + ["---:"] * (3 + len(checks)))]
        for g in groups:
            right, count = pooled(g, category)
            low, high = wilson_interval(right, count)
            lines.append(markdown_row([*(str(g[k]) for k in group_keys), str(g["n"]),
                                       _mean_std(g, f"{PREFIX}/{category}/right"),
                                       f"{low:.3f}-{high:.3f} ({right}/{count})",
                                       *(_mean_std(g, f"{PREFIX}/{category}/{c}") for c in checks)]))
        grid = next((p for p in grids if p.stem == f"suite_{category}"), None)
        if grid is not None:
            lines += ["", "Grid: a row per method (first seed), the columns "
                      + "; ".join(f'"{p}"' for p in prompts.get(category, [])) + ", from the same noise in every row.",
                      "", f"![{category}]({grid.name})"]
    return lines


def _mean_std(group: dict, key: str) -> str:
    if key not in group:
        return ""
    return format_number(group[key]) + (f" ± {format_number(group[f'{key}_std'])}" if f"{key}_std" in group else "")


def suite_plot(out: Path, groups: list[dict], keys: list[str], rows: list[dict]) -> Path:
    """``suite_right.png``: per backbone, each method's right per category as bars (mean over seeds, ± one
    standard deviation)."""
    names = categories(rows)
    panels = sorted({g.get(BACKBONE_KEY) for g in groups}, key=str)
    label_keys = [k for k in keys if k not in (SEED_KEY, BACKBONE_KEY)]
    fig = Figure(figsize=(max(8.0, 1.3 * len(names) + 4), 3.8 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        mine = [g for g in groups if g.get(BACKBONE_KEY) == panel]
        width = 0.8 / max(1, len(mine))
        for j, g in enumerate(mine):
            values = [g.get(f"{PREFIX}/{c}/right", 0.0) for c in names]
            spread = [g.get(f"{PREFIX}/{c}/right_std", 0.0) for c in names]
            ax.bar([i + j * width for i in range(len(names))], values, width, yerr=spread, capsize=2,
                   label=", ".join(str(g[k]) for k in label_keys) or "run")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("right")
        ax.set_title(str(panel) if panel is not None else "")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / "suite_right.png"
    fig.savefig(path, dpi=100)
    return path


def suite_grids(out: Path, runs: list[PlannedRun], scoring: SuiteScoring, rows: list[dict]) -> list[Path]:
    """``suite_CATEGORY.png`` per category: a row per run of the first seed, its first images (the same prompts
    and noise in every row), labelled with the run's values."""
    first_seed: dict[tuple, PlannedRun] = {}
    for run in runs:
        key = tuple((k, str(v)) for k, v in run.values.items() if k != SEED_KEY)
        first_seed.setdefault(key, run)
    chosen = list(first_seed.values())
    paths = []
    for category in [c for c in categories(rows) if c != "overall"]:
        folders = [suite_folder(run.record, scoring) / "images" / category for run in chosen]
        images = [[Image.open(p) for p in sorted(folder.glob("*.png"))[:GRID_COLUMNS]] for folder in folders]
        if not any(images):
            continue
        grid = labelled_grid(images, [", ".join(value_pairs({k: v for k, v in run.values.items() if k != SEED_KEY}))
                                      for run in chosen])
        path = out / f"suite_{category}.png"
        grid.save(path)
        paths.append(path)
    return paths


def prompts_of(run: PlannedRun, scoring: SuiteScoring) -> dict[str, list[str]]:
    """Each category's first prompts, in the order of the grid's columns."""
    rows = json.loads((suite_folder(run.record, scoring) / RESULTS).read_text())["rows"]
    found: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if len(found[row["category"]]) < GRID_COLUMNS:
            found[row["category"]].append(row["prompt"])
    return dict(found)

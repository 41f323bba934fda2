"""The comparison's curves (matplotlib, PNG): the training loss against step, and each quality metric against
step and against training seconds. One axis per backbone; one line per method (the mean over its seeds),
with the seeds' spread (one standard deviation) as a band."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure  # a figure drawn straight to a file: no display, no pyplot state

BACKBONE_KEY = "model.backbone"
SEED_KEY = "seed"


def plot_curves(out: Path, rows: list[dict], curves: dict[str, list[dict]], keys: list[str],
                metrics: list[str], titles: dict[str, str]) -> list[Path]:
    """``rows``: a row per run (its ``run`` name and matrix values); ``curves``: each run's metrics.jsonl rows.
    Writes ``loss.png`` and one ``<metric>.png`` per quality metric; returns their paths."""
    panels = sorted({row.get(BACKBONE_KEY) for row in rows}, key=str) if BACKBONE_KEY in keys else [None]
    line_keys = [k for k in keys if k not in (SEED_KEY, BACKBONE_KEY)]
    lines: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # panel -> label -> runs
    for row in rows:
        label = ", ".join(str(row[k]) for k in line_keys) or "run"
        lines[row.get(BACKBONE_KEY)][label].append(row["run"])
    paths = [_figure(out / "loss.png", panels, lines, curves, "loss", "training loss", ["step"])]
    for metric in metrics:
        name = metric.replace("/", "_")
        paths.append(_figure(out / f"{name}.png", panels, lines, curves, metric, titles[metric],
                             ["step", "train_seconds"]))
    return paths


def _figure(path: Path, panels: list, lines: dict, curves: dict[str, list[dict]], metric: str, title: str,
            x_keys: list[str]) -> Path:
    fig = Figure(figsize=(5.5 * len(x_keys), 3.6 * len(panels)))
    axes = fig.subplots(len(panels), len(x_keys), squeeze=False)
    for r, panel in enumerate(panels):
        for c, x_key in enumerate(x_keys):
            ax = axes[r][c]
            for label, runs in lines[panel].items():
                xs, mean, std = _mean_curve([curves[run] for run in runs], x_key, metric)
                if not xs:
                    continue
                ax.plot(xs, mean, label=label, linewidth=1.3)
                if any(std):
                    ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                                    [m + s for m, s in zip(mean, std, strict=True)], alpha=0.2)
            ax.set_xlabel("optimizer step" if x_key == "step" else "training seconds")
            ax.set_ylabel(title)
            if metric == "loss":
                ax.set_yscale("log")
            ax.set_title(title + (f" ({panel})" if panel is not None else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _mean_curve(runs: list[list[dict]], x_key: str, metric: str) -> tuple[list[float], list[float], list[float]]:
    """The metric at each step every run logged it: mean and standard deviation over the runs, and the mean
    x (the step, or the training seconds, which differ between runs)."""
    by_step: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for rows in runs:
        for row in rows:
            if row.get(metric) is not None:
                by_step[row["step"]].append((row[x_key], row[metric]))
    steps = sorted(s for s, found in by_step.items() if len(found) == len(runs))
    xs = [statistics.fmean(x for x, _ in by_step[s]) for s in steps]
    mean = [statistics.fmean(y for _, y in by_step[s]) for s in steps]
    std = [statistics.stdev([y for _, y in by_step[s]]) if len(runs) > 1 else 0.0 for s in steps]
    return xs, mean, std

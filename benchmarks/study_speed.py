"""Each run's training speed in a comparison, measured side by side on an idle machine.

    python benchmarks/study_speed.py configs/conditioning_methods.yaml     # prints the table; writes REPORT/speeds.*

The images/s in a comparison's report are logged during training, beside whatever else the machine ran; these are
the ones to compare. For every matrix cell but the seed (its first seed's config, at its matched width) the bare
model step (forward, loss, backward, AdamW on one batch of real scenes held in memory: trainer_speed's ``model
step``) is timed, the cells taking turns (``timing.interleaved_medians``) so that a drift in the machine's load hits
them alike. Writes ``speeds.json`` and ``speeds.md`` (the table, with the CPU, the thread count and the date) into
the comparison's report folder.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from quickstart_sweep import cpu_name
from timing import interleaved_medians
from trainer_speed import model_step

from film_diffusion.studies.compare import ModelInputs, prepare
from film_diffusion.studies.model_cost import model_size
from film_diffusion.studies.plan import load_compare, value_pairs
from film_diffusion.studies.plots import SEED_KEY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a compare config")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps of each cell, taken in turn")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each cell first")
    args = parser.parse_args()
    config = load_compare(args.config)
    runs, _ = prepare(config)
    cells = {}
    for run in runs:
        key = ", ".join(value_pairs({k: v for k, v in run.values.items() if k != SEED_KEY}))
        cells.setdefault(key, run)
    inputs = ModelInputs()
    steps = {key: model_step(run.config, Accelerator(mixed_precision=run.config.train.mixed_precision, cpu=True))
             for key, run in cells.items()}
    params = {key: model_size(run.config, *inputs(run.config), "params") for key, run in cells.items()}
    seconds = interleaved_medians(steps, args.repeats, args.warmup, torch.device("cpu"))
    batch = {key: run.config.train.batch_size for key, run in cells.items()}
    rows = [{"cell": key, "params": params[key], "images_per_s": batch[key] / seconds[key]} for key in cells]
    machine = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
               "load_average": os.getloadavg()[0], "repeats": args.repeats}
    threads = f"{machine['threads']} thread{'s' if machine['threads'] > 1 else ''}"
    lines = [f"Bare model step, side by side: `python benchmarks/study_speed.py {args.config}` on {machine['cpu']}, "
             f"{threads}, {machine['date']} (median of {args.repeats} steps each, taken in turn; "
             f"load average {machine['load_average']:.2f} at the end).", "",
             "| run | params (M) | images/s |", "| --- | ---: | ---: |"]
    lines += [f"| {row['cell']} | {row['params'] / 1e6:.3f} | {row['images_per_s']:.1f} |" for row in rows]
    report = Path(config.report_dir or config.output_dir)
    report.mkdir(parents=True, exist_ok=True)
    (report / "speeds.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    (report / "speeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

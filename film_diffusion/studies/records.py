"""A finished run's record: the small files a comparison's report reads (its config, its metrics, its measures and
grid row; the suite's summary and settings, and the images its grids show with their rows), kept under
``REPORT/runs/RUN/`` the moment the run is trained, scored and measured.

The report is made from records alone. A study's report folder is committed as it grows, while its output folder
(checkpoints, pipelines: too large to commit) lives only as long as the machine does; with its records committed, a
study that spans several sittings on machines that do not keep their disks loses at most the run under way. A run
with a record made with the comparison's current settings is never trained, scored or measured again. Without a
``report_dir``, a run's record is its own run folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from typing import Any

from film_diffusion.atomic import write_text
from film_diffusion.benchmark import RESULTS
from film_diffusion.studies.plan import CompareConfig, PlannedRun
from film_diffusion.studies.suite_report import GRID_COLUMNS, suite_folder

RECORD = "record.json"  # written last; it names the settings the record was made with
MEASURES = "compare_measures.json"
SAMPLES = "compare_samples"
KEPT_FILES = ("config.yaml", "metrics.jsonl", MEASURES)


def record_settings(config: CompareConfig) -> dict[str, Any]:
    """What a record depends on beyond the run's experiment: the grid's noise and the suite's settings."""
    return {"grid_seed": config.grid_seed, "evaluate": None if config.evaluate is None else asdict(config.evaluate)}


def is_kept(run: PlannedRun, config: CompareConfig) -> bool:
    """Whether the run has a whole record made with the comparison's settings (a record torn by a kill has no
    ``record.json``)."""
    path = run.record / RECORD
    try:
        return path.is_file() and json.loads(path.read_text()) == record_settings(config)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def keep(run: PlannedRun, config: CompareConfig) -> None:
    """Copy the run's record out of its run folder; the record appears whole or not at all (it is assembled
    beside its place and renamed into it)."""
    settings = record_settings(config)
    if run.record.resolve() == run.folder.resolve():
        write_text(run.record / RECORD, json.dumps(settings, indent=1) + "\n")
        return
    partial = run.record.with_name(f".{run.record.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a kill while it was assembled
    partial.mkdir(parents=True)
    for name in KEPT_FILES:
        shutil.copy2(run.folder / name, partial / name)
    shutil.copytree(run.folder / SAMPLES, partial / SAMPLES)
    if config.evaluate is not None:
        source, target = suite_folder(run.folder, config.evaluate), suite_folder(partial, config.evaluate)
        target.mkdir(parents=True)
        kept = set()
        for category in sorted(p for p in (source / "images").iterdir() if p.is_dir()):
            (target / "images" / category.name).mkdir(parents=True)
            for image in sorted(category.glob("*.png"))[:GRID_COLUMNS]:  # what the report's grids show
                shutil.copy2(image, target / "images" / category.name / image.name)
                kept.add(f"images/{category.name}/{image.name}")
        results = json.loads((source / RESULTS).read_text())
        results["rows"] = [row for row in results["rows"] if row["image"] in kept]  # the summary counts them all
        (target / RESULTS).write_text(json.dumps(results, indent=1) + "\n")
    (partial / RECORD).write_text(json.dumps(settings, indent=1) + "\n")
    old = run.record.with_name(f".{run.record.name}.old")
    if run.record.exists():
        shutil.rmtree(old, ignore_errors=True)
        run.record.rename(old)
    partial.rename(run.record)
    shutil.rmtree(old, ignore_errors=True)

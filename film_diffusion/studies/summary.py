"""A comparison's seed-averaged table with the columns a reader asks for, printed from its ``results.json``, so
that a table quoted in a README or a paper is the report's own figures rather than typed ones (a test checks
that every table the README and docs/ quote this way still matches)."""

from __future__ import annotations

import json
from pathlib import Path

from film_diffusion.errors import UserError
from film_diffusion.studies.plots import SEED_KEY
from film_diffusion.studies.report import METRICS, OTHER_COLUMNS, seed_table, suite_column_name


def available_columns(groups: list[dict]) -> dict[str, str]:
    """Column name -> results key: ``position`` -> ``eval/position``, ``cogent/all`` -> ``eval_cogent/all``,
    ``images_per_s`` -> itself; the suite's ``binding`` -> ``suite/binding/right``, ``binding/colors`` ->
    ``suite/binding/colors``."""
    present = {k for g in groups for k in g}
    names = {f"{short}{m}": f"{prefix}/{m}" for prefix, short in (("eval", ""), ("eval_cogent", "cogent/"))
             for m in METRICS if f"{prefix}/{m}" in present}
    suite = {suite_column_name(k): k for k in sorted(present) if k.startswith("suite/") and not k.endswith("_std")}
    return names | {k: k for k in OTHER_COLUMNS if k in present} | suite


def summary_table(results: dict, columns: list[str]) -> str:
    """Markdown: one row per group of seeds (the matrix's keys but ``seed``), ``n``, then ``mean ± std`` of
    each column."""
    groups = results["groups"]
    keys = [k for k in results["matrix"] if k != SEED_KEY]
    names = available_columns(groups)
    missing = [c for c in columns if c not in names]
    if missing:
        raise UserError(f"This comparison has no column {', '.join(map(repr, missing))}; choose from "
                        f"{', '.join(names)}.")
    return "\n".join(seed_table(groups, keys, [names[c] for c in columns]))


def summary(study: str | Path, columns: list[str]) -> str:
    """The table of a comparison's report folder (or output folder) holding ``results.json``."""
    path = Path(study) / "results.json"
    if not path.is_file():
        raise UserError(f"'{study}' holds no results.json; give the folder `film-diffusion compare` wrote its "
                        "report into (its report_dir, or output_dir when it has none).")
    try:
        results = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"'{path}' is not readable JSON ({err}); run `film-diffusion compare` again to rewrite "
                        "it.") from None
    return summary_table(results, columns)

"""The ``evaluate`` command: sample a pipeline on the benchmark suite's prompts (:mod:`.evaluation.suite`), read
every image with the oracle, and write the scores with their intervals, one row per image, the images and a
grid per category.

``OUT/results.json`` holds ``summary`` (per category and check: accuracy, 95% Wilson interval, count) and
``rows``; ``OUT/results.md`` the table; ``OUT/images/CATEGORY/NNNN.png`` each image; ``OUT/grids/CATEGORY.png``
its first images labelled with the prompt and what the oracle read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from film_diffusion.atomic import write_text
from film_diffusion.data.shapes import NUM_SCENE_CLASSES
from film_diffusion.errors import UserError
from film_diffusion.evaluation.oracle_weights import load_oracle
from film_diffusion.evaluation.suite import CATEGORIES, Prompt, categories_for, draw_prompts, judge, summarize
from film_diffusion.grid import labelled_grid
from film_diffusion.sample import choose_device, load_pipeline, pipeline_folder
from film_diffusion.training.run_folder import CONFIG, saved_config

GRID_ROWS = 12
RESULTS = "results.json"


def run_evaluate(path: str | Path, suite: str = "full", split: str = "val", out: str | Path | None = None,
                 samples: int = 200, seed: int = 0, batch_size: int = 50, steps: int | None = None,
                 guidance_scale: float | None = None, device: str | None = None) -> Path:
    """Score the pipeline in ``path`` (a pipeline folder or a run's) on ``suite`` over ``split``; returns OUT
    (default ``RUN/evaluation/SUITE-SPLIT``). ``samples`` images per category, the noise of image ``i`` of a
    category seeded by ``(seed, category, i)``: the same arguments give the same images on the same machine, and another
    batch size only float rounding (at most one level of 255 in a few pixels)."""
    if samples < 1 or batch_size < 1:
        raise UserError("--samples and --batch-size must be at least 1.")
    folder = pipeline_folder(path)
    holdout = _run_holdout(folder)
    pipe = load_pipeline(folder)
    takes_text = pipe.text_encoder is not None
    _check_class_model(pipe, takes_text)
    names = categories_for(suite, split, holdout, takes_text)
    out = Path(out) if out is not None else folder.parent / "evaluation" / f"{suite}-{split}"
    if (out / RESULTS).exists():
        raise UserError(f"'{out}' already holds results; pass --out to another folder or delete that one.")
    pipe.to(choose_device(device))
    pipe.set_progress_bar_config(disable=True)

    prompts = [p for name in names for p in draw_prompts(name, split, samples, holdout, takes_text)]

    def generate(batch: Sequence[Prompt], indices: Sequence[int]) -> torch.Tensor:
        return _generate(pipe, batch, indices, seed, steps, guidance_scale)

    rows = score_prompts(generate, prompts, out, batch_size, desc=f"evaluate {suite} on {split}")
    summary = summarize(rows, names)
    settings = {"suite": suite, "split": split, "samples_per_category": samples, "seed": seed,
                "steps": steps or pipe.config.num_inference_steps,
                "guidance_scale": pipe.config.guidance_scale if guidance_scale is None else guidance_scale,
                "pipeline": str(folder), "holdout": [list(p) for p in holdout]}  # fmt: skip
    _write_grids(rows, names, out)
    write_text(out / "results.md", results_markdown(summary, settings))
    write_text(out / RESULTS, json.dumps({"settings": settings, "summary": summary, "rows": rows}, indent=1) + "\n")
    return out


def score_prompts(generate: Callable[[Sequence[Prompt], Sequence[int]], torch.Tensor], prompts: Sequence[Prompt],
                  out: Path, batch_size: int = 50, desc: str = "evaluate") -> list[dict]:
    """Make each prompt's image with ``generate(batch, indices)`` (``[B, 3, H, W]`` in [0, 1]; ``indices`` number the
    images within their category), save it under ``out`` and judge the oracle's reading of it: one row per image."""
    oracle = None
    rows: list[dict] = []
    position = {name: 0 for name in CATEGORIES}
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        batch = prompts[start : start + batch_size]
        indices = []
        for prompt in batch:
            indices.append(position[prompt.category])
            position[prompt.category] += 1
        images = generate(batch, indices)
        oracle = oracle or load_oracle(images.shape[-1])
        read = oracle.read_objects(images * 2 - 1)
        rows += [_row(*args, out) for args in zip(batch, read, images, indices, strict=True)]
    return rows


def _run_holdout(folder: Path) -> list[tuple[str, str]]:
    """The (colour, shape) pairs the run held out, from its config beside the pipeline (none for a lone pipeline);
    a run trained on a folder of images is refused: the suite asks for built-in scenes."""
    run = folder.parent
    if not (run / CONFIG).is_file():
        return []
    config = saved_config(run)
    data = (config.get("data") or {}) if isinstance(config, dict) else None  # None: torn, or not a mapping
    if not isinstance(data, dict):
        raise UserError(f"'{run / CONFIG}' is not a run's config (YAML mapping); repair it or evaluate the pipeline "
                        "folder alone.")
    if data.get("name", "shapes") != "shapes":
        raise UserError(f"'{run}' was trained on a folder of images, not the built-in scenes that the "
                        "suite asks for and the oracle reads; evaluate a run trained on data.name: shapes.")
    return [tuple(pair) for pair in data.get("holdout") or []]


def _check_class_model(pipe: Any, takes_text: bool) -> None:
    classes = pipe.denoiser.null_class_label
    if not takes_text and classes != NUM_SCENE_CLASSES:
        raise UserError(f"This class-label model has {classes} classes, not the built-in scenes' {NUM_SCENE_CLASSES} "
                        "(colour, shape) classes; the suite can only ask a model trained on them.")


def _generate(pipe: Any, batch: Sequence[Prompt], indices: Sequence[int], seed: int, steps: int | None,
              guidance_scale: float | None) -> torch.Tensor:
    """The batch's images ``[B, 3, H, W]`` in [0, 1], each from its own noise: a generator per image, seeded by
    ``(seed, category, index within the category)``, so an image does not depend on the batch it is in (beyond float
    rounding)."""
    generators = [torch.Generator().manual_seed(_noise_seed(seed, p.category, i)) for p, i in zip(batch, indices,
                                                                                                  strict=True)]
    condition: dict[str, Any] = {}
    if pipe.text_encoder is not None:
        condition["prompt"] = [p.text for p in batch]
    if pipe.denoiser.null_class_label is not None:
        condition["class_labels"] = [p.class_label for p in batch]
    with torch.inference_mode():
        images = pipe(**condition, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                      output_type="pt").images
    return images.float().cpu()


def _noise_seed(seed: int, category: str, index: int) -> int:
    return int(np.random.default_rng([seed, list(CATEGORIES).index(category), index]).integers(2**62))


def _row(prompt: Prompt, read: list[dict], image: torch.Tensor, index: int, out: Path) -> dict:
    """One image's record; the image is saved as PNG beside the results."""
    name = Path("images") / prompt.category / f"{index:04d}.png"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(out / name)
    return {"category": prompt.category, "prompt": prompt.text, "class_label": prompt.class_label,
            "asked": prompt.objects, "stated": list(prompt.stated), "relation": prompt.relation, "read": read,
            "checks": judge(prompt, read), "image": name.as_posix()}  # fmt: skip


def _write_grids(rows: Sequence[dict], names: Sequence[str], out: Path) -> None:
    (out / "grids").mkdir(parents=True, exist_ok=True)
    for name in names:
        mine = [r for r in rows if r["category"] == name][:GRID_ROWS]
        labels = [f"{'right' if r['checks']['right'] else 'WRONG'}: {r['prompt']} | read: {_spoken(r['read'])}"
                  for r in mine]  # fmt: skip
        images = [[Image.open(out / r["image"])] for r in mine]
        labelled_grid(images, labels).save(out / "grids" / f"{name}.png")


def _spoken(objects: Sequence[dict]) -> str:
    return ", ".join(f"{o['size']} {o['color']} {o['shape']} ({o['cell']})" for o in objects) or "nothing"


def results_markdown(summary: dict, settings: dict) -> str:
    """The summary as a markdown table: each category's accuracy with its interval, then its further checks."""
    lines = [f"# Benchmark: suite {settings['suite']}, {settings['split']} split",
             "",
             f"{settings['samples_per_category']} images per category, noise seed {settings['seed']}, "
             f"{settings['steps']} steps, guidance {settings['guidance_scale']}; pipeline `{settings['pipeline']}`. "
             "Accuracy with its 95% Wilson interval; `prompts` counts distinct prompt texts.",
             "",
             "| category | prompts | right | 95% interval | further checks |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, scores in summary["categories"].items():
        right = scores["right"]
        further = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in scores.items() if k not in ("prompts", "right"))
        lines.append(f"| {name} | {scores['prompts']} | {right['accuracy']:.3f} ({right['right']}/{right['count']}) "
                     f"| {right['low']:.3f}-{right['high']:.3f} | {further} |")
    overall = summary["overall"]
    lines.append(f"| **overall** | | {overall['accuracy']:.3f} ({overall['right']}/{overall['count']}) "
                 f"| {overall['low']:.3f}-{overall['high']:.3f} | |")
    return "\n".join(lines) + "\n"

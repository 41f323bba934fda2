"""A new condition on a trained model, worked through (docs/new_condition.md): what cross-attention to the caption's
tokens adds to a trained U-Net when only the new weights learn, against the same model trained otherwise.

    nohup python benchmarks/new_condition.py &       # trains and scores every arm not yet done, then the tables
    python benchmarks/new_condition.py --table       # the tables of what is done

Every arm is ``film-diffusion train configs/quickstart.yaml`` with ``COMMON`` and its own overrides into
``runs/new_condition/ARM``, then ``film-diffusion evaluate RUN --suite single --split test --samples 100``. Two
bases, each ``STEPS`` steps, and what follows each for ``STEPS`` more:

- ``film``: FiLM on the pooled caption vector: the base already reads the caption.
  ``film_grown``: it gains cross-attention to the caption tokens in its attention blocks (zero-initialised, so
  step 0 draws exactly what the base draws) and only the new weights train (``train.trainable: new``);
  ``film_continued``: the base trained on, every weight, FiLM alone (the same steps without the new condition);
  ``film_xattn_scratch``: FiLM + cross-attention from scratch, ``STEPS`` steps.
- ``uncond``: no condition at all (``model.conditioning: []``): the base draws some object.
  ``uncond_grown``: it gains cross-attention with only the new weights training (a ControlNet-style addition);
  ``uncond_grown_all``: the same with every weight training; ``xattn_scratch``: cross-attention from scratch.

Every setting was fixed before any score was read (nothing here is tuned), so the scores are test scores. An arm
whose pipeline is written is not trained again, a scored one not scored again; an interrupted training resumes
from its newest checkpoint. Results: ``docs/new_condition/results.json`` and its tables,
``docs/new_condition/tables.md`` (docs/new_condition.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "new_condition"
RESULTS = ROOT / "docs" / "new_condition"
STEPS = 1000
SAMPLES = 100
COMMON = ["model.backbone=unet", "model.unet.block_out_channels=[16,32,64]", "model.unet.layers_per_block=1",
          "model.unet.norm_num_groups=8", "model.unet.attention_levels=[2]",
          "model.unet.attention_pos_embed=true", "train.mixed_precision=no", "train.repa_weight=0.0",
          "train.lr=0.002", f"train.max_steps={STEPS}", "train.eval_every=0", "train.sample_every=0",
          "train.checkpoint_every=250", "data.max_objects=1"]
FILM_BASE, UNCOND_BASE = "train.init_from=runs/new_condition/film", "train.init_from=runs/new_condition/uncond"
ARMS: dict[str, list[str]] = {
    "film": ["model.conditioning=[film]"],
    "film_grown": ["model.conditioning=[film,cross_attention]", FILM_BASE, "train.trainable=new"],
    "film_continued": ["model.conditioning=[film]", FILM_BASE],
    "film_xattn_scratch": ["model.conditioning=[film,cross_attention]"],
    "uncond": ["model.conditioning=[]"],
    "uncond_grown": ["model.conditioning=[cross_attention]", UNCOND_BASE, "train.trainable=new"],
    "uncond_grown_all": ["model.conditioning=[cross_attention]", UNCOND_BASE],
    "xattn_scratch": ["model.conditioning=[cross_attention]"],
}
NOTES = {"film": f"FiLM (pooled vector), {STEPS} steps",
         "film_grown": f"film + cross-attention (tokens), only the new weights, {STEPS} more steps",
         "film_continued": f"film, every weight, {STEPS} more steps",
         "film_xattn_scratch": f"FiLM + cross-attention from scratch, {STEPS} steps",
         "uncond": f"no condition, {STEPS} steps",
         "uncond_grown": f"uncond + cross-attention, only the new weights, {STEPS} more steps",
         "uncond_grown_all": f"uncond + cross-attention, every weight, {STEPS} more steps",
         "xattn_scratch": f"cross-attention from scratch, {STEPS} steps"}
PARTS = {"film": ["film", "film_grown", "film_continued", "film_xattn_scratch"],
         "uncond": ["uncond", "uncond_grown", "uncond_grown_all", "xattn_scratch"]}
CHECKS = ("color", "shape", "size", "position")  # the columns after right


def cli(*args: str) -> None:
    """One ``film-diffusion`` command in its own process; a failure stops the script with its exit code."""
    code = subprocess.run([sys.executable, "-m", "film_diffusion.cli", *args], cwd=ROOT).returncode
    if code:
        sys.exit(code)


def train(arm: str) -> float | None:
    """Train the arm unless its pipeline is written; returns the minutes it took (None when already trained)."""
    run = RUNS / arm
    if (run / "pipeline" / "model_index.json").is_file():
        return None
    start = time.perf_counter()
    cli("train", "configs/quickstart.yaml", *COMMON, *ARMS[arm], f"output_dir={run.relative_to(ROOT)}",
        *(["--resume", "latest"] if run.exists() else []))
    return (time.perf_counter() - start) / 60


def score(arm: str) -> dict:
    """The arm's single-object scores on the test split (scored once)."""
    out = RUNS / arm / "evaluation" / "single-test"
    if not (out / "results.json").is_file():
        cli("evaluate", str((RUNS / arm).relative_to(ROOT)), "--suite", "single", "--split", "test",
            "--samples", str(SAMPLES))
    return json.loads((out / "results.json").read_text())["summary"]["categories"]["single"]


def trainable_parameters(arm: str) -> int:
    """Parameters the arm's training changed: every one, or with ``trainable=new`` those ``base`` lacks."""
    from film_diffusion.sample import load_pipeline

    params = dict(load_pipeline(RUNS / arm / "pipeline").denoiser.named_parameters())
    if "train.trainable=new" in ARMS[arm]:
        base_arm = arm.split("_")[0]  # film_grown -> film
        base = load_pipeline(RUNS / base_arm / "pipeline").denoiser.state_dict()
        params = {name: p for name, p in params.items() if name not in base}
    return sum(p.numel() for p in params.values())


def table(results: dict, arms: list[str]) -> str:
    """The markdown table of ``arms`` (those done)."""
    lines = ["| arm | what it is | trainable params | right | 95% interval | colour | shape | size | position |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arm in (a for a in arms if a in results["arms"]):
        found = results["arms"][arm]
        single = found["single"]
        right = single["right"]
        lines.append(f"| {arm} | {NOTES[arm]} | {found['trainable_params']:,} | {right['accuracy']:.3f} | "
                     f"{right['low']:.3f}-{right['high']:.3f} | "
                     + " | ".join(f"{single[c]['accuracy']:.3f}" for c in CHECKS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", action="store_true", help="print the table of what is done, train nothing")
    args = parser.parse_args()
    path = RESULTS / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"arms": {}}
    if not args.table:
        RESULTS.mkdir(parents=True, exist_ok=True)
        for arm in ARMS:
            if arm in results["arms"]:
                continue
            minutes = train(arm)
            results["arms"][arm] = {"overrides": COMMON + ARMS[arm], "single": score(arm),
                                    "trainable_params": trainable_parameters(arm), "train_minutes": minutes}
            path.write_text(json.dumps(results, indent=1) + "\n")  # kept arm by arm: commit as they come
    text = "\n\n".join(table(results, arms) for arms in PARTS.values())
    if not args.table:
        (RESULTS / "tables.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

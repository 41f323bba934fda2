"""A new condition on a trained model, worked through (docs/new_condition.md): what cross-attention to the caption's
tokens adds to a trained FiLM U-Net when only the new weights learn, against the same model trained from scratch.

    nohup python benchmarks/new_condition.py &       # trains and scores every arm not yet done, then the table
    python benchmarks/new_condition.py --table       # the table of what is done

Arms, each ``film-diffusion train configs/quickstart.yaml`` with ``COMMON`` and its own overrides into
``runs/new_condition/ARM``, then ``film-diffusion evaluate RUN --suite single --split test --samples 100``:

- ``base``: the U-Net with FiLM on the pooled caption vector, ``STEPS`` steps.
- ``grown``: ``base`` gains cross-attention to the caption tokens in its attention blocks (zero-initialised, so
  step 0 draws exactly what ``base`` draws); only the new weights train (``train.trainable: new``), ``STEPS`` steps.
- ``continued``: ``base`` trained ``STEPS`` more steps, every weight, FiLM alone: what the same steps give
  without the new condition.
- ``scratch``: FiLM + cross-attention from scratch, ``STEPS`` steps: the same architecture as ``grown`` at the
  steps of its training.

Every setting was fixed before any score was read (nothing here is tuned), so the scores are test scores. An arm
whose pipeline is written is not trained again, a scored one not scored again; an interrupted training resumes
from its newest checkpoint. Results: ``docs/new_condition/results.json`` and the table in
``docs/new_condition/README.md``.
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
          "model.unet.attention_pos_embed=true", "train.mixed_precision=no",
          "train.lr=0.002", f"train.max_steps={STEPS}", "train.eval_every=0", "train.sample_every=0",
          "train.checkpoint_every=250", "data.max_objects=1"]
ARMS: dict[str, list[str]] = {
    "base": ["model.conditioning=[film]"],
    "grown": ["model.conditioning=[film,cross_attention]", "train.init_from=runs/new_condition/base",
              "train.trainable=new"],
    "continued": ["model.conditioning=[film]", "train.init_from=runs/new_condition/base"],
    "scratch": ["model.conditioning=[film,cross_attention]"],
}
NOTES = {"base": f"FiLM (pooled vector), {STEPS} steps",
         "grown": f"base + cross-attention (tokens), only the new weights, {STEPS} more steps",
         "continued": f"base, every weight, {STEPS} more steps",
         "scratch": f"FiLM + cross-attention from scratch, {STEPS} steps"}
CHECKS = ("right", "color", "shape", "size", "position")


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
        base = load_pipeline(RUNS / "base" / "pipeline").denoiser.state_dict()
        params = {name: p for name, p in params.items() if name not in base}
    return sum(p.numel() for p in params.values())


def table(results: dict) -> str:
    lines = ["| arm | what it is | trainable params | right | 95% interval | colour | shape | size | position |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arm, found in results["arms"].items():
        single = found["single"]
        right = single["right"]
        lines.append(f"| {arm} | {NOTES[arm]} | {found['trainable_params']:,} | {right['accuracy']:.3f} | "
                     f"{right['low']:.3f}-{right['high']:.3f} | "
                     + " | ".join(f"{single[c]['accuracy']:.3f}" for c in CHECKS[1:]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", action="store_true", help="print the table of what is done, train nothing")
    args = parser.parse_args()
    path = RESULTS / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"arms": {}}
    if not args.table:
        for arm in ARMS:
            if arm in results["arms"]:
                continue
            minutes = train(arm)
            results["arms"][arm] = {"overrides": COMMON + ARMS[arm], "single": score(arm),
                                    "trainable_params": trainable_parameters(arm), "train_minutes": minutes}
            RESULTS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1) + "\n")  # kept arm by arm: commit as they come
    print(table(results))


if __name__ == "__main__":
    main()

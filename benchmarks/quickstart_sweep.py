"""The quickstart's tuning sweep: what was tried, with each variant's oracle scores and minutes.

    python benchmarks/quickstart_sweep.py --list             # the variants
    nohup python benchmarks/quickstart_sweep.py &            # run every variant not yet measured
    python benchmarks/quickstart_sweep.py --only v,flow      # run some
    python benchmarks/quickstart_sweep.py --table            # print the table of what is measured

Each variant is ``configs/quickstart.yaml`` with a few overrides, trained by ``film-diffusion train`` in
its own run folder (``runs/sweep/NAME``) and scored at its last step (and every ``eval_every`` steps, the
curve kept in its JSON) on the quickstart's one-object captions of the **val split** (full wording, 256 scenes,
fixed noise). The sweep tunes, so nothing here reads the test split: the README's test figures come from
``film-diffusion evaluate RUN --split test`` on the chosen recipe only. Variants marked ``sampling`` retrain
nothing: they score another variant's finished pipeline with other sampler settings. A finished variant
writes ``docs/quickstart_sweep/NAME.json`` and is never run again; an interrupted one resumes from its
newest checkpoint. Minutes are wall-clock of the whole ``train`` command (training, grids, the final
evaluation), taken on an otherwise idle machine: run one sweep at a time (the JSON keeps the load average at
the end; above the core count, something else ran beside it). A resumed variant's minutes count only its last
sitting, and its row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from film_diffusion.training.config import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "quickstart_sweep"
RUNS = ROOT / "runs" / "sweep"
SPEEDS = RESULTS / "speeds.json"
SCORES = ("color", "shape", "size", "position", "all", "fid")

# Every key a variant may change is spelled out, so a variant means the same whatever the quickstart's
# defaults become. "base" is the first tuned guess; each training variant changes what its note says of
# it; "quickstart" is the DiT config shipped before the U-Net recipe, "v+xattn2500" the one first shipped (the
# shipped configs/quickstart.yaml is unet+xattn+repa+lr2e-3 at 2,500 steps), and the sampling variants
# score a finished pipeline otherwise.
UNTUNED = ["model.backbone=dit", "train.repa_weight=0.0",
           "model.dit.patch_size=2", "model.dit.hidden_size=128", "model.dit.depth=4", "model.dit.num_heads=4",
           "objective.prediction=epsilon", "objective.min_snr_gamma=null", "train.mixed_precision=no",
           "train.warmup_steps=50", "train.max_steps=300", "train.lr=0.001", "train.batch_size=32",
           "train.ema_decay=0.999", "train.caption_dropout=0.1", "sample.steps=50", "sample.guidance_scale=3.0",
           "model.conditioning=[film]", "data.max_objects=1"]
FAST = UNTUNED + ["model.dit.patch_size=4", "model.dit.hidden_size=192", "model.dit.depth=6", "model.dit.num_heads=6",
        "objective.prediction=v", "objective.min_snr_gamma=5", "train.mixed_precision=bf16",
        "train.warmup_steps=100", "train.max_steps=2000", "train.sample_every=1000",
        "train.checkpoint_every=500", "train.log_every=50", "sample.guidance_scale=2.0"]


# The second sweep (2026-12-07): the quickstart on the U-Net, in float32 (bf16 is 16x slower than float32 on a CPU
# without bf16 instructions, such as this machine's), scored on val every 250 steps so that each row has its curve.
FLOAT32 = ["objective.prediction=flow", "objective.min_snr_gamma=null", "objective.logit_mean=0.0",
           "train.mixed_precision=no", "train.max_steps=1000", "train.batch_size=32", "train.lr=0.001",
           "train.warmup_steps=100", "train.ema_decay=0.999", "train.caption_dropout=0.1", "train.repa_weight=0.0",
           "train.sample_every=0", "train.checkpoint_every=250", "data.max_objects=1", "data.length=null",
           "data.cache=false", "sample.steps=20", "sample.guidance_scale=2.0"]
UNET = ["model.backbone=unet", "model.conditioning=[film]", "model.unet.block_out_channels=[16,32,64]",
        "model.unet.layers_per_block=1", "model.unet.attention_levels=[]", "model.unet.num_heads=4",
        "model.unet.norm_num_groups=8", "model.unet.attention_pos_embed=false", "model.unet.coord_channels=false",
        *FLOAT32]
# The DiT in the same regime: the quickstart's DiT (patch 4, width 192, depth 6) with FiLM and cross-attention.
DIT = ["model.backbone=dit", "model.conditioning=[film,cross_attention]", "model.dit.patch_size=4",
       "model.dit.hidden_size=192", "model.dit.depth=6", "model.dit.num_heads=6", "model.conv_head=false", *FLOAT32]

XATTN = ["model.conditioning=[film,cross_attention]", "model.unet.attention_levels=[2]",
         "model.unet.attention_pos_embed=true"]


@dataclass
class Variant:
    note: str
    overrides: list[str] = field(default_factory=list)
    sampling: str | None = None  # score this variant's pipeline instead of training
    eval_every: int | None = None  # score on val every this many steps too (None: at the last step only)


VARIANTS: dict[str, Variant] = {
    "quickstart": Variant("the DiT quickstart shipped until 2026-12-07: flow+xattn with grids every 500 steps, "
                          "20 sampler steps",
                          FAST + ["objective.prediction=flow", "objective.min_snr_gamma=null",
                                  "model.conditioning=[film,cross_attention]", "train.sample_every=500",
                                  "sample.steps=20"]),
    "v+xattn2500": Variant("the quickstart first shipped: film+xattn with 2,500 steps, 20 DDIM steps",
                           FAST + ["model.conditioning=[film,cross_attention]", "train.max_steps=2500",
                                   "train.sample_every=500", "sample.steps=20"]),
    "untuned": Variant("the first quickstart: width 128, depth 4, patch 2, epsilon, fp32, 300 steps", UNTUNED),
    "base": Variant("patch 4, width 192, depth 6, v + min-SNR 5, bf16, 2,000 steps, guidance 2", FAST),
    "steps3000": Variant("base with 3,000 steps", FAST + ["train.max_steps=3000"]),
    "cosine": Variant("base with the lr decayed to 0 on a cosine after warm-up", FAST + ["train.lr_scheduler=cosine"]),
    "batch16": Variant("base with batch 16, 3,000 steps", FAST + ["train.batch_size=16", "train.max_steps=3000"]),
    "epsilon": Variant("base with epsilon", FAST + ["objective.prediction=epsilon"]),
    "flow": Variant("base with rectified flow (no min-SNR)",
                    FAST + ["objective.prediction=flow", "objective.min_snr_gamma=null"]),
    "patch2": Variant("base with patch 2 (256 tokens), 700 steps", FAST + ["model.dit.patch_size=2",
                                                                          "train.max_steps=700"]),
    "film+xattn": Variant("base with FiLM and cross-attention", FAST + ["model.conditioning=[film,cross_attention]"]),
    "lr2e-3": Variant("base with lr 2e-3", FAST + ["train.lr=0.002"]),
    "flow+xattn": Variant("base with rectified flow (no min-SNR), FiLM and cross-attention",
                          FAST + ["objective.prediction=flow", "objective.min_snr_gamma=null",
                                  "model.conditioning=[film,cross_attention]"]),
    "flow+xattn+lr2e-3": Variant("flow+xattn with lr 2e-3",
                                 FAST + ["objective.prediction=flow", "objective.min_snr_gamma=null",
                                         "model.conditioning=[film,cross_attention]", "train.lr=0.002"]),
    "batch64": Variant("base with batch 64, 1,000 steps", FAST + ["train.batch_size=64", "train.max_steps=1000"]),
    "ema0.99": Variant("base with EMA decay 0.99", FAST + ["train.ema_decay=0.99"]),
    "dropout0.2": Variant("base with caption dropout 0.2", FAST + ["train.caption_dropout=0.2"]),
    "objects1-3": Variant("base trained on 1-3-object scenes", FAST + ["data.max_objects=3"]),
    "fp32": Variant("base in float32, 1,400 steps", FAST + ["train.mixed_precision=no", "train.max_steps=1400"]),
    "width256": Variant("base with width 256, depth 8", FAST + ["model.dit.hidden_size=256", "model.dit.depth=8",
                                                                "model.dit.num_heads=8"]),
    "ddim50": Variant("v+xattn2500 sampled with 50 DDIM steps (as first shipped)", ["sample.steps=50"],
                      sampling="v+xattn2500"),
    "guidance1": Variant("v+xattn2500 sampled without guidance, 50 DDIM steps",
                         ["sample.guidance_scale=1", "sample.steps=50"], sampling="v+xattn2500"),
    "guidance1.5": Variant("v+xattn2500 sampled with guidance 1.5, 50 DDIM steps",
                           ["sample.guidance_scale=1.5", "sample.steps=50"], sampling="v+xattn2500"),
    "guidance3": Variant("v+xattn2500 sampled with guidance 3, 50 DDIM steps",
                         ["sample.guidance_scale=3", "sample.steps=50"], sampling="v+xattn2500"),
    "ddim20": Variant("v+xattn2500 sampled with 20 DDIM steps", ["sample.steps=20"], sampling="v+xattn2500"),
    "dpm++20": Variant("v+xattn2500 sampled with 20 DPM++ steps", ["sample.steps=20", "sample.scheduler=dpm++"],
                       sampling="v+xattn2500"),
    "flow50": Variant("the quickstart sampled with 50 flow Euler steps", ["sample.steps=50"], sampling="quickstart"),
    "flow-guidance1.5": Variant("the quickstart sampled with guidance 1.5", ["sample.guidance_scale=1.5"],
                                sampling="quickstart"),
    "flow-guidance3": Variant("the quickstart sampled with guidance 3", ["sample.guidance_scale=3"],
                              sampling="quickstart"),
    "unet": Variant("U-Net 16-32-64, one ResBlock a level, attention in the middle only, FiLM, flow, float32, "
                    "1,000 steps", UNET, eval_every=250),
    "unet+repa": Variant("unet with REPA 0.5 (the built-in CLIP image tower, block down.1.res.0)",
                         UNET + ["train.repa_weight=0.5"], eval_every=250),
    "unet+lr2e-3": Variant("unet with lr 2e-3", UNET + ["train.lr=0.002"], eval_every=250),
    "unet+coords": Variant("unet with coordinate input channels", UNET + ["model.unet.coord_channels=true"],
                           eval_every=250),
    "unet32": Variant("unet with channels 32-64-64 (about 2x the step)",
                      UNET + ["model.unet.block_out_channels=[32,64,64]", "model.unet.norm_num_groups=16"],
                      eval_every=250),
    "unet+xattn": Variant("unet with FiLM and cross-attention (8x8 level and middle, position embedding)",
                          UNET + XATTN, eval_every=250),
    "unet+xattn+repa": Variant("unet+xattn with REPA 0.5", UNET + XATTN + ["train.repa_weight=0.5"],
                               eval_every=250),
    "unet+xattn+repa+lr2e-3": Variant("unet+xattn with REPA 0.5 and lr 2e-3",
                                      UNET + XATTN + ["train.repa_weight=0.5", "train.lr=0.002"], eval_every=250),
    "unet+xattn16+repa+lr2e-3": Variant("unet+xattn+repa+lr2e-3 with attention at 16x16 too",
                                        UNET + XATTN + ["model.unet.attention_levels=[1,2]", "train.repa_weight=0.5",
                                                        "train.lr=0.002"], eval_every=250),
    "unet+xattn+repa+lr2e-3+3000steps": Variant(
        "unet+xattn+repa+lr2e-3 trained 3,000 steps: where its curve goes",
        UNET + XATTN + ["train.repa_weight=0.5", "train.lr=0.002", "train.max_steps=3000"], eval_every=500),
    "unet+xattn+repa+lr2e-3+cache": Variant(
        "unet+xattn+repa+lr2e-3 on 4,096 scenes drawn once and kept (data.cache), 2,500 steps",
        UNET + XATTN + ["train.repa_weight=0.5", "train.lr=0.002", "train.max_steps=2500", "data.length=4096",
                        "data.cache=true"], eval_every=500),
    "unet+xattn+repa+lr2e-3+linear2000": Variant(
        "unet+xattn+repa+lr2e-3, 2,000 steps with the lr decayed linearly to 0 after warm-up",
        UNET + XATTN + ["train.repa_weight=0.5", "train.lr=0.002", "train.max_steps=2000",
                        "train.lr_scheduler=linear"], eval_every=500),
    "dit": Variant("the DiT (patch 4, width 192, depth 6, FiLM + cross-attention), flow, float32, 1,000 steps", DIT,
                   eval_every=250),
    "dit+repa": Variant("dit with REPA 0.5 (block 1)", DIT + ["train.repa_weight=0.5"], eval_every=250),
    "dit+conv_head": Variant("dit ending in a 3x3 convolution, as U-ViT", DIT + ["model.conv_head=true"],
                             eval_every=250),
    "dit+conv_head+repa+lr2e-3": Variant("dit+conv_head with REPA 0.5 and lr 2e-3",
                                         DIT + ["model.conv_head=true", "train.repa_weight=0.5", "train.lr=0.002"],
                                         eval_every=250),
    "dit+conv_head+repa+lr2e-3+3000steps": Variant(
        "dit+conv_head+repa+lr2e-3 trained 3,000 steps: where its curve goes",
        DIT + ["model.conv_head=true", "train.repa_weight=0.5", "train.lr=0.002", "train.max_steps=3000"],
        eval_every=500),
    # benchmarks/shape_by_noise.py: the patch-4 DiT loses shape even from a lightly noised true image; a finer grid
    "dit+patch2+conv_head+repa+lr2e-3": Variant(
        "dit+conv_head+repa+lr2e-3 with patch 2 (a 16x16 grid), width 96, 4 heads, 3,000 steps",
        DIT + ["model.dit.patch_size=2", "model.dit.hidden_size=96", "model.dit.num_heads=4", "model.conv_head=true",
               "train.repa_weight=0.5", "train.lr=0.002", "train.max_steps=3000"], eval_every=500),
}


def run_variant(name: str, variant: Variant) -> dict:
    """Train (or, for a sampling variant, score) and return the result row; resumes an interrupted run."""
    run = RUNS / (variant.sampling or name)
    start, resumed = time.perf_counter(), False
    if variant.sampling:
        if not (RESULTS / f"{variant.sampling}.json").exists():
            raise SystemExit(f"Variant '{name}' scores '{variant.sampling}', which has not finished; run it first.")
        steps = json.loads((RESULTS / f"{variant.sampling}.json").read_text())["steps"]
        scores = score_pipeline(run, variant.overrides)
    else:
        last = variant_config(variant.overrides).train.max_steps
        command = ["film-diffusion", "train", str(ROOT / "configs" / "quickstart.yaml"), f"output_dir={run}",
                   *variant.overrides, f"train.eval_every={variant.eval_every or last}"]
        if list(run.glob("checkpoints/checkpoint-[0-9]*[0-9]")):  # complete ones: a kill leaves *.partial
            command += ["--resume", "latest"]
            resumed = True
        elif run.exists():  # stopped before its first checkpoint: nothing to keep
            shutil.rmtree(run)
        subprocess.run(command, check=True)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        curve = [{"step": row["step"], "train_seconds": row["train_seconds"],
                  **{k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}}
                 for row in rows if "eval/all" in row]
        scores = {k: v for k, v in curve[-1].items() if k not in ("step", "train_seconds")}
        steps = last
    # The 1-minute load average at the end: above the core count, something else ran and the minutes are not idle.
    return {"name": name, "note": variant.note, "overrides": variant.overrides, "sampling": variant.sampling,
            "steps": steps, "minutes": (time.perf_counter() - start) / 60, "resumed": resumed,
            "load_average": os.getloadavg()[0], "threads": os.environ.get("OMP_NUM_THREADS"), **scores,
            **({"curve": curve} if not variant.sampling else {})}


def variant_config(overrides: list[str]) -> ExperimentConfig:
    """The quickstart config with a variant's overrides, as ``film-diffusion train`` reads it."""
    from film_diffusion.training.config import load_experiment

    return load_experiment(ROOT / "configs" / "quickstart.yaml", overrides)


def score_pipeline(run: Path, overrides: list[str]) -> dict[str, float]:
    """The quickstart's final evaluation of a finished run's pipeline, with other sample settings."""
    from film_diffusion.pipelines import FilmDiffusionPipeline
    from film_diffusion.training.config import load_experiment
    from film_diffusion.training.hooks import evaluate

    config = load_experiment(run / "config.yaml", overrides)
    pipe = FilmDiffusionPipeline.from_pretrained(run / "pipeline")
    if config.sample.scheduler:
        pipe.set_scheduler(config.sample.scheduler)
    return {k.removeprefix("eval/"): v for k, v in evaluate(pipe, config).items()}


def measure_speeds(names: list[str]) -> None:
    """Each training variant's trainer images/s (``film-diffusion train`` itself, 60 steps, the first window left
    out), measured back to back on this machine now and kept in ``speeds.json``: the equal-minute accounting of
    variants that ran beside other work. Run it with nothing else running."""
    import tempfile

    from trainer_speed import trainer_rate

    speeds = json.loads(SPEEDS.read_text()) if SPEEDS.exists() else {}
    quiet = ["train.max_steps=60", "train.log_every=10", "train.sample_every=0", "train.eval_every=0",
             "train.checkpoint_every=0"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in (n for n in names if not VARIANTS[n].sampling):
            config = variant_config([*VARIANTS[name].overrides, *quiet])
            rate = trainer_rate(config, Path(tmp) / name)
            speeds[name] = {"images_per_s": rate, "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"),
                            "load_average": os.getloadavg()[0]}
            print(f"{name}: {rate:.1f} images/s", flush=True)
            SPEEDS.write_text(json.dumps(speeds, indent=1) + "\n")


def cpu_name() -> str:
    """The CPU's model name (Linux), with the core count."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores"


def table(rows: list[dict]) -> str:
    """One row per variant; "idle train minutes" is its steps at the images/s ``--speed`` measured (where it has
    one): the minutes to compare when variants ran beside other work; "all, along the way" is the val all-right
    at each earlier scoring (the variants scored every ``eval_every`` steps)."""
    speeds = json.loads(SPEEDS.read_text()) if SPEEDS.exists() else {}
    lines = ["| variant | what changed | steps | minutes | idle train minutes | colour | shape | size | position | "
             "all | FID | all, along the way |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        figures = " | ".join(f"{row[k]:.2f}" if k == "fid" else f"{row[k]:.3f}" for k in SCORES)
        minutes = f"{row['minutes']:.1f}" + (" (resumed: last sitting)" if row.get("resumed") else "")
        speed = speeds.get(row["name"])
        images = row["steps"] * variant_config(row["overrides"]).train.batch_size if speed else 0
        idle = f"{images / speed['images_per_s'] / 60:.1f}" if speed else "-"
        curve = ", ".join(f"{point['step']}: {point['all']:.2f}" for point in row.get("curve", [])[:-1]) or "-"
        lines.append(f"| {row['name']} | {row['note']} | {row['steps']} | {minutes} | {idle} | {figures} | {curve} |")
    return "\n".join(lines)



def measured() -> list[dict]:
    return [json.loads((RESULTS / f"{name}.json").read_text()) for name in VARIANTS
            if (RESULTS / f"{name}.json").exists()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated variant names (default: every variant not yet measured)")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--table", action="store_true", help="print the table of measured variants and exit")
    parser.add_argument("--speed", action="store_true", help="measure the training variants' images/s (all, or "
                        "--only) on this machine, with nothing else running, and exit")
    args = parser.parse_args()
    if args.list:
        for name, variant in VARIANTS.items():
            print(f"{name:12s} {variant.note}")
        return
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown variants {unknown}; see --list.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.speed:
        measure_speeds(names)
        return
    for name in [] if args.table else names:
        if (RESULTS / f"{name}.json").exists():
            continue
        print(f"== {name}: {VARIANTS[name].note}", flush=True)
        row = run_variant(name, VARIANTS[name])
        (RESULTS / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
    text = table(measured())
    (RESULTS / "README.md").write_text("# The quickstart sweep\n\nMade by `python benchmarks/quickstart_sweep.py`; "
                                       "see its docstring.\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())

"""Images/s of ``film-diffusion train`` against the bare model step and against a plain diffusers loop.

    python benchmarks/trainer_speed.py                  # CPU
    python benchmarks/trainer_speed.py --device cuda    # a GPU (the trainer picks it up by itself)

Three loops on the quickstart's data, model size and precision, measured back to back, ``--rounds``
times in turn (the table gives the median of each):
- ``trainer``: the real ``train()`` (data loader, text encoder or labels, caption dropout, noise, EMA,
  gradient clipping, logging), its ``images_per_s`` read from ``metrics.jsonl``;
- ``model step``: the same model on one batch held in memory: forward, loss, backward, AdamW step;
  nothing else. ``trainer`` / ``model step`` is what the loop around the model costs;
- ``diffusers loop``: a plain Accelerate loop as diffusers' training scripts write it, training
  ``DiTTransformer2DModel`` of the same width, depth, heads and patch with ``DDPMScheduler``, EMA and
  gradient clipping, on the same scenes and precision.
Two models: the config's own (the quickstart: text), and the config's DiT size with class labels and adaLN-Zero,
the conditioning diffusers' DiT has, so that the diffusers loop trains the same network as ours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, DiTTransformer2DModel
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader

from film_diffusion.cpu_memory import keep_freed_memory
from film_diffusion.data.collate import collate
from film_diffusion.data.shapes import NUM_SCENE_CLASSES
from film_diffusion.training.build import build_dataset, build_denoiser, build_encoder
from film_diffusion.training.config import ExperimentConfig, load_experiment
from film_diffusion.training.inputs import ConditionMaker
from film_diffusion.training.repa import RepresentationAlignment
from film_diffusion.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["model.backbone=dit", "condition.source=class_labels", f"condition.num_classes={NUM_SCENE_CLASSES}",
          "model.conditioning=[adaln_zero]"]


def trainer_rate(config: ExperimentConfig, folder: Path) -> float:
    """Median images/s over the trainer's log windows, the first (warm-up) window left out."""
    config.output_dir = folder
    train(config)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(row["images_per_s"] for row in rows[1:] if "images_per_s" in row)


def windowed_rate(step: Callable[[], None], steps: int, window: int, batch: int, synchronize) -> float:
    """Median images/s over windows of ``window`` steps, the first window left out, as the trainer logs."""
    rates = []
    for w in range(steps // window):
        synchronize()
        start = time.perf_counter()
        for _ in range(window):
            step()
        synchronize()
        if w:
            rates.append(batch * window / (time.perf_counter() - start))
    return statistics.median(rates)


def model_step(config: ExperimentConfig, accelerator: Accelerator) -> Callable[[], None]:
    """The denoiser's training step on one fixed batch of real scenes, nothing around it but the objective's own
    parts: with ``train.repa_weight``, REPA's alignment loss (the frozen image tower and the projector) too."""
    encoder = build_encoder(config.condition)
    model = build_denoiser(config, 3, config.data.resolution, getattr(encoder, "token_dim", None),
                           getattr(encoder, "pooled_dim", None), getattr(encoder, "max_length", None))
    repa = RepresentationAlignment(model, config.train.repa_block, accelerator.device) if config.train.repa_weight \
        else None
    trained = list(model.parameters()) + (list(repa.alignment.parameters()) if repa else [])
    optimizer = torch.optim.AdamW(trained, lr=config.train.lr, weight_decay=config.train.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    if encoder is not None:
        encoder.to(accelerator.device)
    dataset = build_dataset(config.data, config.condition)
    batch = collate([dataset[i] for i in range(config.train.batch_size)])
    keep = torch.zeros(len(batch["image"]), dtype=torch.bool, device=accelerator.device)  # no caption dropped
    inputs = ConditionMaker(encoder, config, model, accelerator.device)(batch, keep)
    x0 = batch["image"].to(accelerator.device)
    noise = torch.randn_like(x0)
    timesteps = torch.randint(0, 1000, (len(x0),), device=accelerator.device)

    def step() -> None:
        with accelerator.autocast(), repa.tap.active() if repa else contextlib.nullcontext():
            prediction = model(x0 + noise, timesteps, **inputs).sample
        loss = F.mse_loss(prediction.float(), noise)
        if repa:  # as the trainer: the tower and projector outside autocast
            loss = loss + config.train.repa_weight * repa.loss(x0)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def diffusers_loop(config: ExperimentConfig, accelerator: Accelerator) -> Callable[[], None]:
    """diffusers' DiT trained the way diffusers' example scripts train: DDPMScheduler noise, MSE on epsilon,
    clipping, AdamW, EMAModel, batches from a DataLoader over the same scenes with their class labels."""
    dit = config.model.dit
    model = DiTTransformer2DModel(num_attention_heads=dit.num_heads,
                                  attention_head_dim=dit.hidden_size // dit.num_heads, in_channels=3,
                                  num_layers=dit.depth, sample_size=config.data.resolution,
                                  patch_size=dit.patch_size, num_embeds_ada_norm=NUM_SCENE_CLASSES)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    loader = DataLoader(build_dataset(config.data, config.condition), batch_size=config.train.batch_size,
                        shuffle=True, collate_fn=collate, drop_last=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ema = EMAModel(model.parameters(), decay=config.train.ema_decay)
    batches = iter(loader)

    def step() -> None:
        batch = next(batches)
        x0, labels = batch["image"], batch["label"]
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, 1000, (len(x0),), device=x0.device)
        with accelerator.autocast():
            prediction = model(scheduler.add_noise(x0, noise, timesteps), timestep=timesteps,
                               class_labels=labels).sample
        loss = F.mse_loss(prediction.float(), noise)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=60, help="steps per measurement")
    parser.add_argument("--window", type=int, default=10, help="steps per timed window (the trainer's log_every)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each loop, taken in turn")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=64")
    args = parser.parse_args()
    if args.device == "cpu":
        keep_freed_memory()
    quiet = [f"train.max_steps={args.steps}", f"train.log_every={args.window}", "train.sample_every=0",
             "train.eval_every=0", "train.checkpoint_every=0", "train.compile=false",
             "train.gradient_checkpointing=false", *args.overrides]  # the model step does neither
    accelerator = Accelerator(mixed_precision=load_experiment(args.config, quiet).train.mixed_precision,
                              cpu=args.device == "cpu")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    models = {f"{Path(args.config).stem} ({load_experiment(args.config, quiet).model.backbone})": [],
              "DiT, class labels, adaLN-Zero": LABELS}
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for m, (model_name, extra) in enumerate(models.items()):
                config = load_experiment(args.config, quiet + extra)
                loops = ["trainer", "model step"] + (["diffusers loop"] if extra else [])
                for loop_name in loops:
                    if loop_name == "trainer":
                        rate = trainer_rate(config, Path(tmp) / f"{m}-{r}")
                    else:
                        build = model_step if loop_name == "model step" else diffusers_loop
                        rate = windowed_rate(build(config, accelerator), args.steps, args.window,
                                             config.train.batch_size, sync)
                    rates.setdefault((model_name, loop_name), []).append(rate)
                    print(f"round {r + 1}: {model_name}, {loop_name}: {rate:.1f} images/s", flush=True)
    config = load_experiment(args.config, quiet)
    dit, unet = config.model.dit, config.model.unet
    own = (f"U-Net channels {unet.block_out_channels}, attention levels {unet.attention_levels}"
           if config.model.backbone == "unet" else f"DiT width {dit.hidden_size}, depth {dit.depth}")
    print(f"\n{own}; the labelled DiT width {dit.hidden_size}, depth {dit.depth}, patch {dit.patch_size}; "
          f"{config.data.resolution} px, batch {config.train.batch_size}, data.cache {config.data.cache}, mixed "
          f"precision {config.train.mixed_precision}, {args.device}, median of {args.rounds} rounds of {args.steps} "
          "steps\n")
    print("| model | trainer images/s | model step images/s | trainer / model step | diffusers loop images/s "
          "| trainer / diffusers |")
    print("|---|---:|---:|---:|---:|---:|")
    for model_name in models:
        ours, bare = (statistics.median(rates[(model_name, k)]) for k in ("trainer", "model step"))
        theirs = rates.get((model_name, "diffusers loop"))
        other = f"{statistics.median(theirs):.1f} | {ours / statistics.median(theirs):.2f}x" if theirs else "- | -"
        print(f"| {model_name} | {ours:.1f} | {bare:.1f} | {ours / bare:.3f} | {other} |")


if __name__ == "__main__":
    main()

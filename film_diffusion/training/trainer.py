"""``film-diffusion train``: one Accelerate loop for every backbone and conditioning method.

Read :func:`train` top to bottom: build everything from the config (a mistake stops here, before any file is
written), restore a checkpoint if asked, then per optimizer step: accumulate micro-batches, clip, step, update the
EMA, log, and let the periodic hooks draw grids, evaluate and checkpoint. The end of the run is the EMA model saved
as a sampling pipeline folder (``RUN/pipeline``). Beside it: the data stream (:mod:`.streams`), the model's inputs
(:mod:`.inputs`), the run folder (:mod:`.run_folder`), the hooks (:mod:`.hooks`) and the EMA (:mod:`.ema`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from film_diffusion.cpu_memory import keep_freed_memory
from film_diffusion.errors import UserError
from film_diffusion.training.build import build_dataset, build_denoiser, build_encoder, build_vae, latent_shape
from film_diffusion.training.config import ExperimentConfig, check_config
from film_diffusion.training.ema import RunEMA
from film_diffusion.training.hooks import PeriodicHooks, make_pipeline, save_pipeline
from film_diffusion.training.init_from import freeze_all_but, init_from
from film_diffusion.training.inputs import ConditionMaker, clean_latents
from film_diffusion.training.lora import add_lora
from film_diffusion.training.objectives import diffusion_loss, noise_scheduler, noisy_batch
from film_diffusion.training.progress import RunProgress, nonfinite
from film_diffusion.training.randomness import ShardedRandom
from film_diffusion.training.repa import RepresentationAlignment
from film_diffusion.training.run_folder import load_checkpoint, log_metrics, open_run, start_writing
from film_diffusion.training.sharding import (
    EMACounters,
    ShardedState,
    as_float,
    gradient_sync,
    sampling_weights,
    shard,
)
from film_diffusion.training.streams import LATENTS, batch_stream, stored_latents


def train(config: ExperimentConfig, resume: str | None = None) -> Path:
    """Train as ``config`` says; ``resume``: ``"latest"`` or a checkpoint folder. Returns the run folder."""
    run = Path(config.output_dir)
    tc = config.train
    accelerator = make_accelerator(config)
    start_from, restart = open_run(run, resume, config, accelerator)

    # Everything is built before anything is written: a config mistake leaves no trace.
    set_seed(config.seed)
    encoder = build_encoder(config.condition)
    vae = build_vae(config.vae)
    channels, size = latent_shape(config, vae)
    model = build_denoiser(config, channels, size, getattr(encoder, "token_dim", None),
                           getattr(encoder, "pooled_dim", None), getattr(encoder, "max_length", None))
    if tc.init_from is not None:
        added = init_from(model, tc.init_from)
        if tc.trainable == "lora":
            added += add_lora(model, tc)
        if tc.trainable != "all":
            freeze_all_but(model, added)
    dataset = build_dataset(config.data, config.condition)
    scheduler = noise_scheduler(config.objective, config.model.learn_sigma, pixel_space=vae is None)
    device = accelerator.device
    for frozen in (encoder, vae):
        if frozen is not None:
            frozen.to(device)
    replica = None  # a sharded run's unsharded copy, on the main process, that grids and the pipeline sample with
    fsdp = tc.sharding == "fsdp"
    if fsdp:
        model.to(device)
        replica = copy.deepcopy(model).requires_grad_(False).eval() if accelerator.is_main_process else None
        shard(model)
    repa = RepresentationAlignment(model, tc.repa_block, device) if tc.repa_weight else None
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    trained += list(repa.alignment.parameters()) if repa else []  # the projector, trained beside the model
    optimizer = torch.optim.AdamW(trained, lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                  weight_decay=tc.weight_decay)
    # The lr schedule counts optimizer steps and is stepped once per step by us, whatever the process count.
    lr_schedule = get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=tc.warmup_steps,
                                num_training_steps=tc.max_steps)
    if tc.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if tc.compile:
        model = torch.compile(model)
    if fsdp:  # sharded already: Accelerate's CPU mode would wrap it in DDP
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    if repa:  # prepared after the model: checkpoints hold it as the second model
        repa.alignment = accelerator.prepare(repa.alignment)
    denoiser = accelerator.unwrap_model(model, keep_torch_compile=False)  # the module itself, for EMA and pipelines
    clipped = list(model.parameters()) + (list(repa.alignment.parameters()) if repa else [])  # one norm over both
    # the pipeline shares the weights it samples with: the denoiser's, or a sharded run's replica (main process)
    pipe = make_pipeline(denoiser if replica is None else replica, scheduler, encoder, vae, config)
    ema = RunEMA(denoiser.parameters(), decay=tc.ema_decay, warmup=tc.ema_warmup)  # sharded: a shard per process
    random = ShardedRandom(config.seed, accelerator.process_index, accelerator.num_processes, device)
    progress = RunProgress()
    sharded = ShardedState(model, optimizer, ema) if fsdp else None
    run_state = {"progress": progress, "lr_schedule": lr_schedule, "ema": EMACounters(ema) if sharded else ema,
                 "random": random}
    if start_from is not None:
        load_checkpoint(accelerator, start_from, run_state, sharded)
    start_writing(run, config, accelerator, progress.step, start_from, restart)

    if config.vae.precompute:
        dataset = stored_latents(dataset, run / LATENTS, vae, accelerator)
    batches = batch_stream(dataset, config, accelerator, progress.step)
    conditions = ConditionMaker(encoder, config, denoiser, device)
    ema_in_pipe = functools.partial(sampling_weights, ema, denoiser, replica, accelerator.is_main_process)
    hooks = PeriodicHooks(run, config, accelerator, pipe, ema_in_pipe, run_state, sharded)
    accum = tc.gradient_accumulation_steps

    # the bar closes on an error too, so that the error's line is the last one printed
    with tqdm(total=tc.max_steps, initial=progress.step, desc="training",
              disable=not accelerator.is_main_process) as bar:
        seconds: list[float] = []  # per step since the last log row
        while progress.step < tc.max_steps:
            tick = time.perf_counter()
            model.train()
            step_loss = torch.zeros((), device=device)
            repa_loss = torch.zeros((), device=device)
            for i in range(accum):
                batch = next(batches)
                with gradient_sync(model, accelerator, sync=i == accum - 1):
                    x0 = clean_latents(vae, batch, random, device)
                    inputs = conditions(batch, random.rand(len(x0)) < tc.caption_dropout)
                    noisy = noisy_batch(config.objective, scheduler, x0, random)
                    with accelerator.autocast(), repa.tap.active() if repa else contextlib.nullcontext():
                        prediction = model(noisy.x_t, noisy.timesteps, **inputs).sample
                    loss = objective = diffusion_loss(prediction, noisy, x0, scheduler)
                    if repa:
                        aligned = repa.loss(batch["image"].to(device))
                        repa_loss += aligned.detach() / accum
                        objective = loss + tc.repa_weight * aligned
                    accelerator.backward(objective / accum)
                step_loss += loss.detach() / accum
            loss_value = accelerator.reduce(step_loss, "mean").item()  # the same on every process
            grad_norm = as_float(accelerator.clip_grad_norm_(clipped, tc.max_grad_norm)
                                 if tc.max_grad_norm and math.isfinite(loss_value) else None)
            problem = nonfinite(loss_value, grad_norm, scaled=tc.mixed_precision == "fp16")
            if problem and not tc.skip_nonfinite:
                raise UserError(f"The {problem} at step {progress.step + 1}; the run stopped and its checkpoints are "
                                "untouched. Lower train.lr, set train.max_grad_norm, use bf16 rather than fp16, or set "
                                "train.skip_nonfinite: true to skip such steps.")
            lr = lr_schedule.get_last_lr()[0]  # the rate this step uses
            if problem:  # the step counts (the data stream and the lr schedule go on) but changes no weight
                progress.skipped += 1
                bar.write(f"step {progress.step + 1}: the {problem}; its update was skipped (train.skip_nonfinite).")
            else:
                optimizer.step()
                ema.step(denoiser.parameters())
                progress.add_loss(loss_value)
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            seconds.append(time.perf_counter() - tick)  # training only: not sampling, evaluation or checkpoints
            progress.seconds += seconds[-1]
            bar.update(1)

            if progress.step % tc.log_every == 0 or progress.step == tc.max_steps:
                row = progress.take_log_row(lr, grad_norm, tc.batch_size, seconds, ema.last_decay,
                                            with_skipped=tc.skip_nonfinite)
                if repa:  # this step's, not the window's mean
                    row["repa_loss"] = accelerator.reduce(repa_loss, "mean").item()
                bar.set_postfix(loss=f"{row['loss']:.4f}" if row["loss"] is not None else "skipped",
                                img_s=f"{row['images_per_s']:.1f}")
                log_metrics(run, accelerator, row)
            hooks(progress.step, progress.seconds, bar)

    with ema_in_pipe():
        if accelerator.is_main_process:
            save_pipeline(run / "pipeline", pipe, base=tc.init_from)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run


def make_accelerator(config: ExperimentConfig) -> Accelerator:
    """Accelerate's view of this process (CPU where there is no accelerator, so that torchrun's processes form a
    gloo group), with what this trainer cannot do refused before anything is built."""
    run = Path(config.output_dir)
    accelerator = Accelerator(mixed_precision=config.train.mixed_precision, log_with="tensorboard",
                              cpu=not torch.accelerator.is_available(),
                              project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")))
    check_config(config, accelerator.num_processes)
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise UserError(f"This trainer shards the model itself (train.sharding: fsdp, the same FSDP2 wrapping on GPUs "
                        f"and the CPU); Accelerate's {accelerator.distributed_type.value} plugin is not used: choose "
                        "multi-GPU (DDP) in your accelerate config and set train.sharding.")
    if config.train.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UserError("train.mixed_precision=fp16 needs a GPU (Accelerate would silently train in float32 on the "
                        "CPU); use bf16 or no.")
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    return accelerator

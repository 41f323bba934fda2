"""``film-diffusion train``: one Accelerate loop for every backbone and conditioning method.

Read :func:`train` top to bottom: build everything from the config (a mistake stops here, before any
file is written), restore a checkpoint if asked, then per optimizer step: accumulate micro-batches,
clip, step, update the EMA, log, sample, checkpoint. The end of the run is the EMA model saved as a
sampling pipeline folder (``RUN/pipeline``). The small helpers beside it each do one thing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from pickle import UnpicklingError

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from film_diffusion.config import ConfigError, config_to_dict
from film_diffusion.cpu_memory import keep_freed_memory
from film_diffusion.data.collate import collate
from film_diffusion.encoders import EmbeddingCache, TextEncoder
from film_diffusion.encoders.null import null_condition
from film_diffusion.errors import UserError, first_line
from film_diffusion.evaluation.quality import evaluate_pipeline, held_out_scenes
from film_diffusion.grid import labelled_grid
from film_diffusion.integrity import write_manifest
from film_diffusion.pipelines import FilmDiffusionPipeline
from film_diffusion.pipelines.schedulers import scheduler_from_name
from film_diffusion.training.build import build_dataset, build_denoiser, build_encoder, build_vae, latent_shape
from film_diffusion.training.checkpoints import (
    CHECKPOINTS,
    checkpoint_step,
    clean_leftovers,
    load_run_state,
    publish,
    resolve_resume,
    save_checkpoint,
)
from film_diffusion.training.config import ExperimentConfig, check_config
from film_diffusion.training.objectives import diffusion_loss, noise_scheduler, noisy_batch
from film_diffusion.training.randomness import ShardedRandom

METRICS = "metrics.jsonl"
WALL_CLOCK = ("images_per_s", "train_seconds")
"""The metrics rows' keys measured by the clock: all others are the same in every run of one config."""
LATENTS = "latents.safetensors"


def train(config: ExperimentConfig, resume: str | None = None) -> Path:
    """Train as ``config`` says; ``resume``: ``"latest"`` or a checkpoint folder. Returns the run folder."""
    run = Path(config.output_dir)
    tc = config.train
    # cpu=True where there is no accelerator, so that torchrun's processes form a gloo group on the CPU.
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, log_with="tensorboard",
                              cpu=not torch.accelerator.is_available(),
                              project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")))
    check_config(config, accelerator.num_processes)
    if accelerator.is_main_process and (run / "config.yaml").is_file():  # a run folder: clear what a kill left
        for leftover in clean_leftovers(run) + clean_leftovers(run / CHECKPOINTS):
            print(f"Removed {leftover}, left unfinished by an earlier stop.")
    accelerator.wait_for_everyone()
    start_from, damaged = resolve_resume(run, resume)
    restart = start_from is None and (run / "config.yaml").exists()
    if restart:
        if not resume:
            raise UserError(f"output_dir '{run}' already holds a run; pass --resume latest, or choose another "
                            "output_dir.")
        if _saved_config(run) not in (None, config_to_dict(config)):  # no checkpoint yet: the same run restarts
            raise UserError(f"output_dir '{run}' holds a run with no complete checkpoint yet, started with another "
                            "config; delete it to start over, or choose another output_dir.")
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise UserError(f"This trainer runs on one process or with DDP; {accelerator.distributed_type.value} is not "
                        "supported yet (it shards the weights that the EMA and sampling read); choose DDP in "
                        "your accelerate config.")
    if tc.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UserError("train.mixed_precision=fp16 needs a GPU (Accelerate would silently train in float32 on the "
                        "CPU); use bf16 or no.")
    if accelerator.device.type == "cpu":
        keep_freed_memory()

    # Everything is built before anything is written: a config mistake leaves no trace.
    set_seed(config.seed)
    encoder = build_encoder(config.condition)
    vae = build_vae(config.vae)
    channels, size = latent_shape(config, vae)
    model = build_denoiser(config, channels, size, getattr(encoder, "token_dim", None),
                           getattr(encoder, "pooled_dim", None), getattr(encoder, "max_length", None))
    dataset = build_dataset(config.data, config.condition)
    scheduler = noise_scheduler(config.objective, config.model.learn_sigma, pixel_space=vae is None)
    try:
        sample_scheduler = scheduler_from_name(config.sample.scheduler or _default_sampler(config), scheduler)
    except UserError as err:
        raise ConfigError(f"Config key 'sample.scheduler': {err}") from None

    if accelerator.is_main_process:
        for message in damaged:
            print(f"Passing over a damaged checkpoint: {message}")
    device = accelerator.device
    for frozen in (encoder, vae):
        if frozen is not None:
            frozen.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                  weight_decay=tc.weight_decay)
    # The lr schedule counts optimizer steps and is stepped once per step by us, whatever the process count.
    lr_schedule = get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=tc.warmup_steps,
                                num_training_steps=tc.max_steps)
    if tc.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if tc.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    denoiser = accelerator.unwrap_model(model, keep_torch_compile=False)  # the module itself, for EMA and pipelines
    ema = EMAModel(denoiser.parameters(), decay=tc.ema_decay, foreach=True)  # one fused update, not a loop
    random = ShardedRandom(config.seed, accelerator.process_index, accelerator.num_processes, device)
    progress = RunProgress()
    run_state = {"progress": progress, "lr_schedule": lr_schedule, "ema": ema, "random": random}
    if start_from is not None:
        try:
            accelerator.load_state(str(start_from))
            load_run_state(start_from, run_state, device)
        except UnpicklingError:  # Accelerate reads its pickles with weights_only=True: nothing in them ran
            raise UserError(f"Checkpoint '{start_from}' holds a pickle that is not plain tensors (Accelerate's "
                            "optimizer or RNG state replaced or tampered with); it was refused, not run. Resume from "
                            "a checkpoint you trust, or train into a new output_dir.") from None
        except (RuntimeError, ValueError, KeyError, OSError, SafetensorError) as err:
            raise UserError(f"Checkpoint '{start_from}' does not fit this run ({first_line(err)}); resume with the "
                            "config it was trained with, or train into a new output_dir.") from None
        if progress.step != checkpoint_step(start_from):
            raise UserError(f"Checkpoint '{start_from}' records step {progress.step}, not its name's; it is damaged.")
    if accelerator.is_main_process and (start_from or restart):
        _truncate_metrics(run / METRICS, progress.step)  # rows logged after the checkpoint are logged again
        print(f"Resuming from {start_from} at step {progress.step}." if start_from else
              f"No complete checkpoint in '{run}' yet: starting it over from step 0.")
    accelerator.wait_for_everyone()  # every process has checked the folder and loaded before a file is written
    if accelerator.is_main_process:  # after the checkpoint fitted the model: a refused resume leaves all as it was
        run.mkdir(parents=True, exist_ok=True)
        _write_whole(run / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    # TensorBoard drops events logged after the checkpoint, as metrics.jsonl drops its rows.
    accelerator.init_trackers("film-diffusion", init_kwargs={"tensorboard": {"purge_step": progress.step + 1}})

    if config.vae.precompute:
        dataset = StoredLatents(dataset, encode_dataset(run / LATENTS, dataset, vae, accelerator))
    accum = tc.gradient_accumulation_steps
    micro = tc.batch_size // (accelerator.num_processes * accum)
    sampler = StreamSampler(len(dataset), micro, accelerator.process_index, accelerator.num_processes,
                            seed=config.seed, start=progress.step * accum)
    batches = iter(DataLoader(SeededItems(dataset, config.seed), batch_size=micro, sampler=sampler,
                              collate_fn=collate, num_workers=config.data.num_workers))
    conditions = ConditionMaker(encoder, config, denoiser, device)
    pipe = make_pipeline(denoiser, sample_scheduler, encoder, vae, config)  # shares the denoiser's weights

    # the bar closes on an error too, so that the error's line is the last one printed
    with tqdm(total=tc.max_steps, initial=progress.step, desc="training",
              disable=not accelerator.is_main_process) as bar:
        seconds: list[float] = []  # per step since the last log row
        while progress.step < tc.max_steps:
            tick = time.perf_counter()
            model.train()
            step_loss = torch.zeros((), device=device)
            for i in range(accum):
                batch = next(batches)
                sync = contextlib.nullcontext() if i == accum - 1 else accelerator.no_sync(model)
                with sync:
                    x0 = _latents(vae, batch, random, device)
                    inputs = conditions(batch, random.rand(len(x0)) < tc.caption_dropout)
                    noisy = noisy_batch(config.objective, scheduler, x0, random)
                    with accelerator.autocast():
                        prediction = model(noisy.x_t, noisy.timesteps, **inputs).sample
                    loss = diffusion_loss(prediction, noisy, x0, scheduler)
                    accelerator.backward(loss / accum)
                step_loss += loss.detach() / accum
            loss_value = accelerator.reduce(step_loss, "mean").item()  # the same on every process
            grad_norm = (accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
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
                row = {"step": progress.step, "loss": progress.take_mean_loss(), "lr": lr,
                       "grad_norm": None if grad_norm is None else float(grad_norm),
                       "images_per_s": tc.batch_size * len(seconds) / sum(seconds), "train_seconds": progress.seconds,
                       **({"skipped_steps": progress.skipped} if tc.skip_nonfinite else {})}
                seconds.clear()
                bar.set_postfix(loss=f"{row['loss']:.4f}" if row["loss"] is not None else "skipped",
                                img_s=f"{row['images_per_s']:.1f}")
                accelerator.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=progress.step)
                if accelerator.is_main_process:
                    _append_metrics(run, row)
            if tc.sample_every and progress.step % tc.sample_every == 0 and accelerator.is_main_process:
                with ema_weights(ema, denoiser):
                    write_samples(run, progress.step, pipe, config, accelerator)
            if tc.eval_every and (progress.step % tc.eval_every == 0 or progress.step == tc.max_steps) \
                    and accelerator.is_main_process:
                with ema_weights(ema, denoiser):
                    scores = evaluate(pipe, config)
                bar.write(f"step {progress.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
                accelerator.log(scores, step=progress.step)
                _append_metrics(run, {"step": progress.step, "train_seconds": progress.seconds, **scores})
            if (tc.checkpoint_every and progress.step % tc.checkpoint_every == 0) or progress.step == tc.max_steps:
                save_checkpoint(accelerator, run, progress.step, tc.checkpoints_total_limit, run_state)

    if accelerator.is_main_process:
        with ema_weights(ema, denoiser):
            save_pipeline(run / "pipeline", pipe)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run


class RunProgress:
    """The step, the loss of the log window in progress, the training seconds and the skipped steps so far:
    checkpointed, so a resumed run logs the same rows as one that never stopped, and its clock goes on from the
    checkpoint's."""

    def __init__(self) -> None:
        self.step = 0
        self.loss_sum = 0.0
        self.loss_count = 0
        self.seconds = 0.0
        self.skipped = 0  # steps whose update a non-finite loss or gradient skipped (train.skip_nonfinite)

    def add_loss(self, value: float) -> None:
        self.loss_sum += value
        self.loss_count += 1

    def take_mean_loss(self) -> float | None:
        """The window's mean loss (None when every step of it was skipped), and a new window."""
        mean = self.loss_sum / self.loss_count if self.loss_count else None
        self.loss_sum, self.loss_count = 0.0, 0
        return mean

    def state_dict(self) -> dict:
        return {"step": self.step, "loss_sum": self.loss_sum, "loss_count": self.loss_count, "seconds": self.seconds,
                "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.loss_sum, self.loss_count = state["step"], state["loss_sum"], state["loss_count"]
        self.seconds, self.skipped = state["seconds"], state.get("skipped", 0)  # checkpoints from before skipping


def nonfinite(loss: float, grad_norm: torch.Tensor | None, scaled: bool) -> str | None:
    """What is not finite in a step, as a phrase, or None. Under fp16 an infinite gradient is the gradient
    scaler's business (it skips that step and lowers the scale), so only the loss counts there."""
    if not math.isfinite(loss):
        return f"loss became {loss}"
    if grad_norm is not None and not scaled and not math.isfinite(norm := float(grad_norm)):
        return f"gradient norm became {norm}"
    return None


class StreamSampler(Sampler[tuple[int, int]]):
    """An endless stream of dataset indices, reshuffled each epoch from the seed; process ``rank`` of
    ``world`` takes its slice of each global micro-batch. ``start`` (micro-steps already taken) resumes
    mid-epoch at the very next index, without reading the skipped ones."""

    def __init__(self, length: int, micro_batch: int, rank: int, world: int, seed: int, start: int = 0):
        self.length, self.micro_batch, self.rank, self.world = length, micro_batch, rank, world
        self.seed, self.start = seed, start
        self._order: tuple[int, torch.Tensor] | None = None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))
            self._order = (epoch, order)
        return self._order[1]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(dataset index, position in the stream): the position seeds the item's random augmentation."""
        k = self.start
        while True:
            first = (k * self.world + self.rank) * self.micro_batch
            for position in range(first, first + self.micro_batch):
                epoch, offset = divmod(position, self.length)
                yield int(self._epoch_order(epoch)[offset]), position
            k += 1


class SeededItems(Dataset):
    """Reads item ``index`` with torch's global RNG seeded from (seed, stream position) for the call, so
    random augmentation (torchvision's flips and crops) is the same on any number of processes and
    after a resume, and differs between epochs."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, position = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone: torch.manual_seed would also queue a lazy seed call for each
            # accelerator type, formatting a stack trace each time (half the cost of a rendered scene).
            torch.default_generator.manual_seed(self.seed * 1_000_003 + position)
            return self.dataset[index]


class ConditionMaker:
    """A batch's captions or labels -> the denoiser's condition keywords, with caption dropout replacing
    the dropped samples' condition by the null one the pipeline samples with."""

    def __init__(self, encoder: TextEncoder | None, config: ExperimentConfig, denoiser: torch.nn.Module,
                 device: torch.device):
        cached = encoder is not None and config.condition.cache
        self.encoder = EmbeddingCache(encoder, file=config.condition.embeddings) if cached else encoder
        self.null_kind = config.train.null_condition
        self.denoiser, self.device = denoiser, device

    def __call__(self, batch: dict, drop: torch.Tensor) -> dict:
        if self.encoder is None:
            labels = batch["label"].to(self.device)
            return {"class_labels": torch.where(drop, self.denoiser.null_class_label, labels)}
        cond = self.encoder.encode(batch["caption"]).to(self.device)
        learned = self.denoiser.conditioner.learned_null
        null = null_condition(self.encoder, self.null_kind, len(drop), learned=learned)
        return {"condition": cond.where(drop, null.to(self.device))}


def _latents(vae, batch: dict, random: ShardedRandom, device: torch.device) -> torch.Tensor:
    """Pixels in pixel space; otherwise a latent drawn from the VAE's posterior (encoded now, or stored by
    ``vae.precompute``) with the run's generator."""
    if vae is None:
        return batch["image"].to(device)
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"].to(device), batch["latent_std"].to(device)
    else:
        with torch.no_grad():
            posterior = vae.encode(batch["image"].to(device, vae.dtype)).latent_dist
        mean, std = posterior.mean, posterior.std
    latents = mean + std * random.randn(tuple(mean.shape)).to(mean.dtype)
    shift = vae.config.get("shift_factor") or 0.0
    return ((latents - shift) * vae.config.scaling_factor).float()


def encode_dataset(path: Path, dataset: Dataset, vae, accelerator: Accelerator, batch_size: int = 32) -> Path:
    """The VAE posterior (mean, std) of every image, with its caption and label, once per run (a resumed run
    reuses the file), written by the main process as safetensors under a temporary name."""
    if accelerator.is_main_process and not path.exists():
        tensors: dict[str, list[torch.Tensor]] = {"mean": [], "std": [], "label": []}
        captions: list[str] = []
        for start in tqdm(range(0, len(dataset), batch_size), desc="encoding latents"):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            with torch.no_grad():
                posterior = vae.encode(batch["image"].to(accelerator.device, vae.dtype)).latent_dist
            tensors["mean"].append(posterior.mean.cpu())
            tensors["std"].append(posterior.std.cpu())
            tensors["label"] += [batch["label"]] if "label" in batch else []
            captions += batch["caption"]
        partial = path.with_name(path.name + ".partial")
        save_file({k: torch.cat(v).contiguous() for k, v in tensors.items() if v}, partial,
                  metadata={"captions": json.dumps(captions)})
        os.replace(partial, path)
    accelerator.wait_for_everyone()
    return path


class StoredLatents(Dataset):
    """Items read from :func:`encode_dataset`'s file alone: the stored posterior (``latent_mean``,
    ``latent_std``), the caption and, for class labels, the label; no image is read or decoded."""

    def __init__(self, dataset: Dataset, path: Path):
        with safe_open(path, "pt") as f:
            self.captions = json.loads(f.metadata()["captions"])
        self.stored = load_file(path)
        if len(self.captions) != len(dataset):
            raise UserError(f"'{path}' holds latents of {len(self.captions)} images, but the dataset has "
                            f"{len(dataset)}; delete it to encode the dataset again.")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        item = {"caption": self.captions[index], "latent_mean": self.stored["mean"][index],
                "latent_std": self.stored["std"][index]}
        return item | ({"label": int(self.stored["label"][index])} if "label" in self.stored else {})


@contextlib.contextmanager
def ema_weights(ema: EMAModel, model: torch.nn.Module) -> Iterator[None]:
    """The EMA weights in ``model`` for the block, the training weights back afterwards (and the mode)."""
    was_training = model.training
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    model.eval()
    try:
        yield
    finally:
        ema.restore(model.parameters())
        model.train(was_training)


def make_pipeline(denoiser, scheduler, encoder, vae, config: ExperimentConfig) -> FilmDiffusionPipeline:
    null = config.train.null_condition if encoder is not None else "empty_caption"
    return FilmDiffusionPipeline(denoiser, scheduler, text_encoder=encoder, vae=vae, null_condition=null)


def write_samples(run: Path, step: int, pipe: FilmDiffusionPipeline, config: ExperimentConfig,
                  accelerator: Accelerator) -> Path:
    """The same captions (or labels) and the same noise at every step: ``samples/step-STEP.png``."""
    sample = config.sample
    text = pipe.text_encoder is not None
    rows = sample.captions if text else sample.class_labels
    inputs = {"prompt": rows} if text else {"class_labels": rows}
    pipe.set_progress_bar_config(disable=True)
    images = pipe(**inputs, num_inference_steps=sample.steps, guidance_scale=sample.guidance_scale,
                  num_images_per_prompt=sample.per_caption,
                  generator=torch.Generator(pipe.device).manual_seed(config.seed)).images
    n = sample.per_caption
    grid = labelled_grid([images[i * n:(i + 1) * n] for i in range(len(rows))],
                         [str(r) if text else f"class {r}" for r in rows])
    path = run / "samples" / f"step-{step:06d}.png"
    path.parent.mkdir(exist_ok=True)
    grid.save(path)
    accelerator.get_tracker("tensorboard").writer.add_image("samples", torch.from_numpy(np.array(grid)),
                                                            step, dataformats="HWC")
    return path


def evaluate(pipe: FilmDiffusionPipeline, config: ExperimentConfig) -> dict[str, float]:
    """Oracle scores, FID and KID on held-out scenes (``eval/...``), and on the compositional split of held-out
    (colour, shape) pairs when the run holds some out (``eval_cogent/...``)."""
    pipe.set_progress_bar_config(disable=True)
    splits = {"eval": "val", **({"eval_cogent": "test"} if config.data.holdout else {})}
    scores = {}
    for prefix, split in splits.items():
        scenes = held_out_scenes(config.data.resolution, config.eval.scenes, config.eval.seed, config.data.holdout,
                                 split)
        found = evaluate_pipeline(pipe, scenes, config.sample.steps, config.sample.guidance_scale,
                                  seed=config.eval.seed, batch_size=config.eval.batch_size)
        scores |= {f"{prefix}/{k}": v for k, v in found.items()}
    return scores


def save_pipeline(folder: Path, pipe: FilmDiffusionPipeline) -> None:
    """Written beside the final name and renamed when complete, so a folder named ``pipeline`` is whole."""
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    pipe.save_pretrained(partial)
    write_manifest(partial)  # `sample` checks it: a damaged copy is refused, not sampled
    publish(partial, folder)


def _default_sampler(config: ExperimentConfig) -> str:
    return "flow_euler" if config.objective.prediction == "flow" else "ddim"


def _append_metrics(run: Path, row: dict) -> None:
    with open(run / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they will be logged again) and a last row that
    a kill cut short; the file is replaced whole, so a kill here loses nothing."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if _logged_by(line, step)]
        _write_whole(path, "".join(line + "\n" for line in kept))


def _logged_by(line: str, step: int) -> bool:
    """Whether a metrics row was logged at ``step`` or before; a row a kill cut short was not logged."""
    try:
        return json.loads(line)["step"] <= step
    except (ValueError, KeyError, TypeError):
        return False


def _write_whole(path: Path, text: str) -> None:
    """Write beside ``path`` and rename over it: a kill leaves the old file or the new one, never half of one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _saved_config(run: Path) -> dict | None:
    """The config a run folder was started with; None if a kill tore it (before it was written whole)."""
    try:
        return yaml.safe_load((run / "config.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return None


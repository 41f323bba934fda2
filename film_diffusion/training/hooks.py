"""What a run does besides its optimizer steps, with the EMA weights swapped in: the sample grids every
``train.sample_every`` steps, the oracle's evaluation every ``train.eval_every`` steps and at the end, the
checkpoints, and the final pipeline folder."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from film_diffusion.atomic import written
from film_diffusion.config import ConfigError
from film_diffusion.errors import UserError
from film_diffusion.evaluation.quality import evaluate_pipeline, held_out_scenes
from film_diffusion.grid import labelled_grid
from film_diffusion.integrity import write_manifest
from film_diffusion.pipelines import FilmDiffusionPipeline
from film_diffusion.training.checkpoints import Stateful, save_checkpoint
from film_diffusion.training.config import ExperimentConfig
from film_diffusion.training.lora import has_lora, save_lora_pipeline
from film_diffusion.training.run_folder import log_metrics
from film_diffusion.training.sharding import ShardedState


class PeriodicHooks:
    """After each optimizer step: a grid, an evaluation and a checkpoint when their intervals say so (grids and
    evaluation on the main process, with the EMA weights that ``ema_weights`` puts where the pipeline samples;
    every process enters it, as a sharded model's weights are gathered)."""

    def __init__(self, run: Path, config: ExperimentConfig, accelerator: Accelerator, pipe: FilmDiffusionPipeline,
                 ema_weights: Callable[[], contextlib.AbstractContextManager], run_state: Mapping[str, Stateful],
                 sharded: ShardedState | None):
        self.run, self.config, self.accelerator, self.pipe = run, config, accelerator, pipe
        self.ema_weights, self.run_state, self.sharded = ema_weights, run_state, sharded

    def __call__(self, step: int, seconds: float, bar: tqdm) -> None:
        tc, main = self.config.train, self.accelerator.is_main_process
        last = step == tc.max_steps
        if tc.sample_every and step % tc.sample_every == 0:
            with self.ema_weights():
                if main:
                    write_samples(self.run, step, self.pipe, self.config, self.accelerator)
        if tc.eval_every and (step % tc.eval_every == 0 or last):
            with self.ema_weights():
                scores = evaluate(self.pipe, self.config) if main else None
            if main:
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
                log_metrics(self.run, self.accelerator, {"step": step, "train_seconds": seconds, **scores})
        if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or last:
            save_checkpoint(self.accelerator, self.run, step, tc.checkpoints_total_limit, self.run_state,
                            self.sharded)


def make_pipeline(denoiser, noise_scheduler: SchedulerMixin, encoder, vae,
                  config: ExperimentConfig) -> FilmDiffusionPipeline:
    """The run's sampling pipeline, sharing the denoiser's weights: the sampler, steps and guidance scale of
    ``config.sample`` become the pipeline's defaults, saved with it, so that the folder samples as the run did. The
    sampler is built as any swap is (``set_scheduler``), from the training schedule and the model's own variance."""
    null = config.train.null_condition if encoder is not None else "empty_caption"
    pipe = FilmDiffusionPipeline(denoiser, noise_scheduler, text_encoder=encoder, vae=vae, null_condition=null,
                                 num_inference_steps=config.sample.steps, guidance_scale=config.sample.guidance_scale)
    try:
        pipe.set_scheduler(config.sample.scheduler or default_sampler(config))
    except UserError as err:
        raise ConfigError(f"Config key 'sample.scheduler': {err}") from None
    return pipe


def write_samples(run: Path, step: int, pipe: FilmDiffusionPipeline, config: ExperimentConfig,
                  accelerator: Accelerator) -> Path:
    """The same captions (or labels) and the same noise at every step: ``samples/step-STEP.png``."""
    sample = config.sample
    text = pipe.text_encoder is not None
    rows = sample.captions if text else sample.class_labels
    inputs = {"prompt": rows} if text else {"class_labels": rows}
    pipe.set_progress_bar_config(disable=True)
    images = pipe(**inputs, num_images_per_prompt=sample.per_caption,
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


def save_pipeline(folder: Path, pipe: FilmDiffusionPipeline, base: Path | None = None) -> None:
    """Written beside the final name and renamed when complete, so a folder named ``pipeline`` is whole. A model
    with a LoRA adapter is saved as diffusers keeps one: its weights without the adapter, the adapter beside them,
    and a record of ``base`` (the model it was trained from)."""
    with written(folder) as partial:
        if has_lora(pipe.denoiser):
            save_lora_pipeline(partial, pipe, base)
        else:
            pipe.save_pretrained(partial)
        write_manifest(partial)  # `sample` checks it: a damaged copy is refused, not sampled


def default_sampler(config: ExperimentConfig) -> str:
    return "flow_euler" if config.objective.prediction == "flow" else "ddim"



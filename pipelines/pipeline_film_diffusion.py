"""FilmDiffusionPipeline: sample from a film-diffusion DiT or U-Net with any diffusers scheduler.

One ``__call__``, as in diffusers: encode the condition, start from noise (or from an image noised part of
the way, image-to-image), and at each step run the model once on the conditional and unconditional halves
together, guide every predicted channel (see ``guidance.py`` for the interval and the rescale), and let the
scheduler step. The unconditional half is the model's own null: the null class of a
class-label model, or the null condition the folder records for a text model (the one training
used for caption dropout).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from film_diffusion.backbones.dit import DiT
from film_diffusion.backbones.unet import UNet
from film_diffusion.conditioning import Condition
from film_diffusion.encoders import OpenCLIP, PairedEncoder, TextEncoder, TransformersCLIP, TransformersT5
from film_diffusion.encoders.null import check_null_condition, null_condition
from film_diffusion.errors import UserError, first_line
from film_diffusion.pipelines.guidance import Guidance
from film_diffusion.pipelines.image_to_image import (
    DEFAULT_STRENGTH,
    check_can_start_midway,
    check_strength,
    midway_timesteps,
    noised,
)
from film_diffusion.pipelines.schedulers import check_scheduler, scheduler_from_name, takes_learned_variance

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 2.0
"""What a pipeline samples with when neither its folder nor the call says otherwise, and the defaults of an
experiment's ``sample.steps`` / ``sample.guidance_scale``: one default for each, everywhere (the quickstart's
sweep measured 20 steps as good as 50, and guidance 2 best among those it tried)."""

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
"""A LoRA adapter's file, diffusers' name: in a folder of its own, or beside a pipeline trained with it."""

NATIVE_LOADER_FILE = "pipeline.py"
NATIVE_LOADER_SOURCE = '''"""Lets diffusers' own loader open this folder (film-diffusion must be installed):

    DiffusionPipeline.from_pretrained(FOLDER, custom_pipeline=FOLDER, trust_remote_code=True)
"""
from film_diffusion.pipelines import FilmDiffusionPipeline

__all__ = ["FilmDiffusionPipeline"]
'''

DENOISERS = (DiT, UNet)
TEXT_ENCODERS = (OpenCLIP, TransformersCLIP, TransformersT5, PairedEncoder)
"""The component classes a folder may name. diffusers loads a component only from a module already
imported, so importing them here is what lets ``from_pretrained`` find them."""

ModelInputs = dict[str, Any]
"""The denoiser's condition keywords: ``condition`` (a :class:`Condition`) and/or ``class_labels``."""


class FilmDiffusionPipeline(DiffusionPipeline):
    """Text- or class-conditioned sampling from a film-diffusion model, in pixel or latent space.

    Args:
        denoiser: a film-diffusion ``DiT`` or ``UNet``.
        scheduler: any diffusers scheduler; its saved config carries the prediction type (epsilon, v
            or flow velocity) and the noise schedule the model was trained with.
        text_encoder: the model's text encoder (one of ``TEXT_ENCODERS``), or None for a
            class-label model. It is saved inside the folder, weights and tokenizer included.
        vae: an ``AutoencoderKL`` for a latent model, or None in pixel space.
        null_condition: the text model's unconditional input, as in training: ``empty_caption``, ``zeros``
            or ``learned`` (the denoiser's own, see ``film_diffusion.encoders.null``). A class-label model
            uses its null class.
        num_inference_steps, guidance_scale: what ``__call__`` uses when not told otherwise; saved with the
            folder (the trainer records its run's ``sample.steps`` and ``sample.guidance_scale``, so a run's
            pipeline samples as the run was scored).
    """

    model_cpu_offload_seq = "text_encoder->denoiser->vae"
    _optional_components = ["text_encoder", "vae"]

    def __init__(self, denoiser: DiT | UNet, scheduler: SchedulerMixin, text_encoder: TextEncoder | None = None,
                 vae: AutoencoderKL | None = None, null_condition: str = "empty_caption",
                 num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE_SCALE):
        super().__init__()
        check_null_condition(null_condition, denoiser.conditioner.learned_null)
        _check_sampling(num_inference_steps, guidance_scale)
        check_scheduler(scheduler)
        _check_components(denoiser, text_encoder)
        self.register_modules(denoiser=denoiser, scheduler=scheduler, text_encoder=text_encoder, vae=vae)
        self.register_to_config(null_condition=null_condition, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale)
        scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=scale, do_normalize=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> FilmDiffusionPipeline:
        """diffusers' loader, reading weights only as safetensors: a folder whose weights are missing is an
        error, never a fall-back to a pickle file. A folder that holds a LoRA adapter beside its components (a
        ``train.trainable: lora`` run's) loads it too, so the pipeline samples as the run did."""
        kwargs.setdefault("use_safetensors", True)
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if (Path(pretrained_model_name_or_path) / LORA_WEIGHTS).is_file():
            pipe.load_lora_weights(pretrained_model_name_or_path)
        return pipe

    def load_lora_weights(self, path_or_state_dict: str | Path | dict, adapter_name: str | None = None) -> None:
        """Add a LoRA adapter to the denoiser: a folder holding ``pytorch_lora_weights.safetensors`` (a LoRA run's
        pipeline folder, or one ``save_lora_adapter`` wrote), that file, or its state dict. The base weights are not
        changed; ``fuse_lora`` merges it, ``unload_lora_weights`` removes it."""
        source, options = path_or_state_dict, {}
        if not isinstance(source, dict):
            file = Path(source) / LORA_WEIGHTS if Path(source).is_dir() else Path(source)
            if not file.is_file():
                raise UserError(f"No LoRA adapter at '{file}'; pass a folder holding {LORA_WEIGHTS}, or the file.")
            source, options = str(file.parent), {"weight_name": file.name}
        before = set(getattr(self.denoiser, "peft_config", {}))
        try:
            self.denoiser.load_lora_adapter(source, prefix=None, adapter_name=adapter_name, use_safetensors=True,
                                            **options)
        except (ValueError, KeyError, RuntimeError) as err:
            added = set(getattr(self.denoiser, "peft_config", {})) - before
            if added:  # the layers PEFT injected before the weights failed to fit: the model is left as it was
                self.denoiser.delete_adapters(sorted(added))
            raise UserError(f"Could not load the LoRA adapter ({first_line(err)}); it must be one trained on this "
                            "model (the same backbone and sizes).") from None

    def fuse_lora(self, lora_scale: float = 1.0) -> None:
        """Merge the loaded adapter into the denoiser's weights (``lora_scale`` times it): sampling then costs
        what the base's does. ``unfuse_lora`` takes it out again."""
        self.denoiser.fuse_lora(lora_scale=lora_scale)

    def unfuse_lora(self) -> None:
        self.denoiser.unfuse_lora()

    def unload_lora_weights(self) -> None:
        """Remove every adapter (unfuse first to get the base weights back from a fused one)."""
        self.denoiser.unload_lora()

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """diffusers' folder (``model_index.json``, a sub-folder per component, safetensors weights) plus a
        one-line ``pipeline.py`` through which ``DiffusionPipeline.from_pretrained`` finds this class."""
        super().save_pretrained(save_directory, **kwargs)
        (Path(save_directory) / NATIVE_LOADER_FILE).write_text(NATIVE_LOADER_SOURCE)

    def set_scheduler(self, scheduler: str | SchedulerMixin) -> None:
        """Sample with another scheduler: a short name (``"ddim"``, ``"dpm++"``, see ``SCHEDULERS``) or a
        diffusers class name, built from the saved scheduler's config so the prediction type and noise
        schedule carry over (and a learned variance reaches the schedulers that read it), or a scheduler object,
        used as it is."""
        if isinstance(scheduler, str):
            scheduler = scheduler_from_name(scheduler, self.scheduler, learned_variance=self.learns_variance)
        else:
            check_scheduler(scheduler, self.scheduler)
        self.scheduler = scheduler

    @property
    def learns_variance(self) -> bool:
        """Whether the denoiser predicts a variance beside its output (a ``learn_sigma`` DiT)."""
        return bool(self.denoiser.config.get("learn_sigma", False))

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        image: PipelineImageInput | None = None,
        strength: float | None = None,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        guidance_rescale: float = 0.0,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``num_images_per_prompt`` images for each prompt (or class label).

        ``num_inference_steps`` and ``guidance_scale`` default to the folder's (``self.config``): for a trained
        run, the steps and guidance it was sampled and scored with. Guidance runs when ``guidance_scale > 1``:
        ``uncond + scale * (cond - uncond)`` on every predicted channel; a learned-sigma model's variance comes
        from the conditional half and goes to schedulers that read it. ``guidance_interval=(start, stop)`` guides
        only that fraction of the steps (the others run the conditional half alone); ``guidance_rescale`` mixes in
        the guided prediction rescaled to the conditional one's standard deviation (diffusers' name and formula).
        ``latents`` is the initial noise ``[B, C, h, w]``; it is scaled by the scheduler's ``init_noise_sigma``.

        ``image`` (one, or one per prompt: PIL, numpy or a tensor in [0, 1], resized to the model's size) turns
        on image-to-image: the image (its VAE latent mean, for a latent model) is noised with ``latents`` to the
        point ``strength`` (default 0.8) of the way back along the schedule, and the last ``int(steps *
        strength)`` steps denoise it; strength 1 is text-to-image from the same noise. ``output_type="pt"``
        gives ``[B, 3, H, W]`` in [0, 1].
        """
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type={output_type!r} is not supported; choose one of {', '.join(OUTPUT_TYPES)}.")
        num_inference_steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        _check_sampling(num_inference_steps, guidance_scale)
        guidance = Guidance(guidance_scale, guidance_interval, guidance_rescale)
        if num_images_per_prompt < 1:
            raise UserError("num_images_per_prompt must be at least 1.")
        if image is None and strength is not None:
            raise UserError("strength is image-to-image's; pass image=... with it, or leave strength out.")
        if image is not None:
            strength = DEFAULT_STRENGTH if strength is None else strength
            check_strength(strength)
            check_can_start_midway(self.scheduler)
        device = self._execution_device
        cond, uncond = self._model_inputs(prompt, class_labels, negative_prompt, num_images_per_prompt, device)
        batch = _batch_size(cond)
        both = _concat_inputs(uncond, cond) if guidance.on else None

        noise = self._noise(batch, latents, generator, device)
        channels = noise.shape[1]
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if image is None or strength == 1:
            timesteps = self.scheduler.timesteps
            # Flow-matching schedulers start from unit noise and have no init_noise_sigma.
            latents = noise * getattr(self.scheduler, "init_noise_sigma", 1.0)
        else:
            timesteps = midway_timesteps(self.scheduler, num_inference_steps, strength)
            clean = self._image_latents(image, batch, num_images_per_prompt, device)
            latents = noised(self.scheduler, clean, noise, timesteps[0])
        step_kwargs = self._step_kwargs(generator)
        for i, t in enumerate(self.progress_bar(timesteps)):
            if guidance.guides_step(i, len(timesteps)):
                x = self._scale_model_input(torch.cat([latents, latents]), t)
                out_uncond, out_cond = self.denoiser(x, t, **both).sample.float().chunk(2)  # (B, C or 2C, h, w)
                guided = guidance.combine(out_uncond[:, :channels], out_cond[:, :channels])
                out = torch.cat([guided, out_cond[:, channels:]], dim=1)
            else:
                out = self.denoiser(self._scale_model_input(latents, t), t, **cond).sample.float()
            if not takes_learned_variance(self.scheduler):
                out = out[:, :channels]  # a learned variance the scheduler does not read is dropped
            latents = self.scheduler.step(out, t, latents, **step_kwargs).prev_sample

        images = latents if output_type == "latent" else self.image_processor.postprocess(
            self._decode(latents), output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _model_inputs(self, prompt: str | Sequence[str] | None, class_labels: Any,
                      negative_prompt: str | Sequence[str] | None, per_prompt: int,
                      device: torch.device) -> tuple[ModelInputs, ModelInputs]:
        """The conditional and unconditional keywords of the denoiser, each for the whole batch."""
        takes_text, takes_labels = self.text_encoder is not None, self.denoiser.null_class_label is not None
        if prompt is not None and not takes_text:
            raise UserError("This pipeline's model is conditioned on class labels, not text; pass class_labels=[...] "
                            "instead of prompt.")
        if class_labels is not None and not takes_labels:
            raise UserError("This pipeline's model is conditioned on text, not class labels; pass prompt=... "
                            "instead of class_labels.")
        if takes_text and prompt is None:
            raise UserError("This pipeline's model is conditioned on text; pass prompt=... (a caption or a list).")
        if takes_labels and class_labels is None:
            raise UserError(f"This pipeline's model is conditioned on class labels; pass class_labels=[...] "
                            f"(0 to {self.denoiser.null_class_label - 1}).")
        if negative_prompt is not None and not takes_text:
            raise UserError("negative_prompt needs a text-conditioned model; this one takes class labels.")
        cond: ModelInputs = {}
        uncond: ModelInputs = {}
        if takes_text:
            prompts = _as_prompts(prompt, "prompt")
            index = torch.arange(len(prompts)).repeat_interleave(per_prompt)
            cond["condition"] = self.text_encoder.encode(prompts)[index].to(device)
            if negative_prompt is None:
                null = null_condition(self.text_encoder, self.config.null_condition, len(index),
                                      learned=self.denoiser.conditioner.learned_null)
                uncond["condition"] = null.to(device)
                cond["condition"] = cond["condition"].fields_of(null)
            else:
                negatives = _as_prompts(negative_prompt, "negative_prompt")
                if len(negatives) not in (1, len(prompts)):
                    raise UserError(f"negative_prompt has {len(negatives)} captions for {len(prompts)} prompts; "
                                    "pass one, or one per prompt.")
                negative = self.text_encoder.encode(negatives)
                uncond["condition"] = negative[index if len(negatives) > 1 else [0] * len(index)].to(device)
        if takes_labels:
            labels = self._class_labels(class_labels).repeat_interleave(per_prompt).to(device)
            cond["class_labels"] = labels
            uncond["class_labels"] = torch.full_like(labels, self.denoiser.null_class_label)
        if takes_text and takes_labels and cond["condition"].batch_size != len(cond["class_labels"]):
            raise UserError("This model takes a caption and a class label per image; pass as many class labels as "
                            "prompts.")
        return cond, uncond

    def _class_labels(self, class_labels: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor([class_labels] if isinstance(class_labels, int) else class_labels).reshape(-1)
        num_classes = self.denoiser.null_class_label
        if labels.dtype.is_floating_point or labels.numel() == 0:
            raise UserError("class_labels must be one or more integer class ids.")
        bad = labels[(labels < 0) | (labels >= num_classes)].tolist()
        if bad:
            raise UserError(f"Class labels {bad} are out of range; this model has classes 0 to {num_classes - 1}.")
        return labels.long()

    def _noise(self, batch: int, latents: torch.Tensor | None, generator: Any, device: torch.device) -> torch.Tensor:
        """The unit noise sampling starts from: ``latents`` when given (checked), else drawn."""
        cfg = self.denoiser.config
        shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise UserError(f"latents must have shape {shape} (images x channels x size x size), "
                            f"got {tuple(latents.shape)}.")
        return latents.to(device, torch.float32)

    def _image_latents(self, image: PipelineImageInput, batch: int, per_prompt: int,
                       device: torch.device) -> torch.Tensor:
        """The input image(s) as clean samples of the batch: in [-1, 1] at the model's size, through the VAE's
        latent mean and scaling for a latent model. One image serves every prompt; a list gives one per prompt."""
        size = self.denoiser.config.sample_size * self.image_processor.config.vae_scale_factor
        try:
            pixels = self.image_processor.preprocess(image, height=size, width=size)
        except (ValueError, TypeError) as err:
            raise UserError(f"image must be a PIL image, a numpy array or a tensor in [0, 1], or a list of them "
                            f"({first_line(err)}).") from None
        expected = 3 if self.vae is not None else self.denoiser.config.in_channels
        if pixels.shape[1] != expected:
            raise UserError(f"image has {pixels.shape[1]} channels; this model draws {expected}-channel images "
                            "(convert it, e.g. PIL's image.convert('RGB')).")
        prompts = batch // per_prompt
        if len(pixels) not in (1, prompts):
            raise UserError(f"{len(pixels)} images for {prompts} prompts; pass one image, or one per prompt.")
        pixels = pixels.to(device, torch.float32).repeat_interleave(batch // len(pixels), dim=0)
        if self.vae is None:
            return pixels
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode().float()
        return (latents - (self.vae.config.get("shift_factor") or 0.0)) * self.vae.config.scaling_factor

    def _scale_model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The scheduler's input scaling (Euler's 1 / sqrt(sigma^2 + 1)); flow-matching ones have none."""
        scale = getattr(self.scheduler, "scale_model_input", None)
        return x if scale is None else scale(x, t)

    def _step_kwargs(self, generator: Any) -> dict[str, Any]:
        """``generator`` for the schedulers whose step draws noise (DDPM, Euler ancestral, ...)."""
        accepts = inspect.signature(self.scheduler.step).parameters
        return {"generator": generator} if "generator" in accepts else {}

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in [-1, 1]; in pixel space they already are images."""
        if self.vae is None:
            return latents
        latents = latents / self.vae.config.scaling_factor + (self.vae.config.get("shift_factor") or 0.0)
        return self.vae.decode(latents.to(self.vae.dtype)).sample.float()


def _check_sampling(num_inference_steps: int, guidance_scale: float) -> None:
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise UserError(f"num_inference_steps must be an integer of at least 1, got {num_inference_steps!r}.")
    Guidance(guidance_scale)


def _check_components(denoiser: DiT | UNet, text_encoder: TextEncoder | None) -> None:
    """A text model needs a text encoder of its widths (and of its learned null's length); a class-label
    model takes none."""
    if not isinstance(denoiser, DENOISERS):
        raise UserError(f"The denoiser must be a film-diffusion DiT or UNet, not a {type(denoiser).__name__}; "
                        "convert diffusers DiT weights with film_diffusion.convert.load_diffusers_dit.")
    if text_encoder is not None and not isinstance(text_encoder, TEXT_ENCODERS):
        raise UserError(f"The text encoder must be a film-diffusion {', '.join(c.__name__ for c in TEXT_ENCODERS)}, "
                        f"not a "
                        f"{type(text_encoder).__name__}.")
    cfg = denoiser.config
    reads_text = cfg.cond_token_dim is not None or cfg.cond_pooled_dim is not None
    if reads_text and text_encoder is None:
        raise UserError(f"This {type(denoiser).__name__} takes text conditions (cond_token_dim={cfg.cond_token_dim}, "
                        f"cond_pooled_dim={cfg.cond_pooled_dim}); pass its text_encoder to the pipeline.")
    if text_encoder is None:
        return
    if not reads_text:
        raise UserError(f"This {type(denoiser).__name__} was built without text inputs (no cond_token_dim or "
                        "cond_pooled_dim); pass text_encoder=None and sample with class_labels.")
    for field, width in (("cond_token_dim", text_encoder.token_dim), ("cond_pooled_dim", text_encoder.pooled_dim)):
        if cfg[field] is not None and cfg[field] != width:
            raise UserError(f"The denoiser's {field}={cfg[field]} does not match the text encoder's width {width}; "
                            "pair the model with the encoder it was trained with.")
    learned = denoiser.conditioner.learned_null
    if learned is not None and learned.tokens is not None and len(learned.tokens) != text_encoder.max_length:
        length = text_encoder.max_length
        raise UserError(f"The denoiser's learned null has {len(learned.tokens)} tokens but the text encoder gives "
                        f"{length}; build the model with learned_null_tokens={length}.")


def _as_prompts(prompt: str | Sequence[str], name: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise UserError(f"{name} must be a caption or a non-empty list of captions.")
    return prompts


def _batch_size(inputs: ModelInputs) -> int:
    if "condition" in inputs:
        return inputs["condition"].batch_size
    return len(inputs["class_labels"])


def _concat_inputs(first: ModelInputs, second: ModelInputs) -> ModelInputs:
    """One batch of both halves, so that guidance costs one forward pass per step."""
    out: ModelInputs = {}
    if "condition" in first:
        out["condition"] = Condition.cat([first["condition"], second["condition"]])
    if "class_labels" in first:
        out["class_labels"] = torch.cat([first["class_labels"], second["class_labels"]])
    return out

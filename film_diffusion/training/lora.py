"""``train.trainable: lora``: low-rank adapters (PEFT, through diffusers' ``PeftAdapterMixin`` on our models) on a
model started from ``train.init_from``, and the run's pipeline folder as diffusers keeps a LoRA: the base
weights unchanged, the adapter beside them in ``pytorch_lora_weights.safetensors``, and ``lora.json`` naming
the base it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import LoraConfig

from film_diffusion.backbones.dit import DiT
from film_diffusion.backbones.unet import UNet
from film_diffusion.config import ConfigError
from film_diffusion.pipelines import FilmDiffusionPipeline
from film_diffusion.pipelines.pipeline_film_diffusion import LORA_WEIGHTS
from film_diffusion.training.config import TrainConfig

LORA_RECORD = "lora.json"
"""Beside the adapter in a run's pipeline folder: the base (``train.init_from``), rank, alpha and targets."""


def add_lora(model: DiT | UNet, train: TrainConfig) -> list[str]:
    """Adapters on the modules ``train.lora_targets`` names (B zero-initialised, so the model starts as it was);
    returns the adapter parameters' names."""
    config = LoraConfig(r=train.lora_rank, lora_alpha=train.lora_alpha or train.lora_rank,
                        target_modules=list(train.lora_targets), init_lora_weights=True)
    try:
        model.add_adapter(config)
    except ValueError as err:  # PEFT: no module matched
        raise ConfigError(f"Config key 'train.lora_targets' is {train.lora_targets}, which names no module of this "
                          f"model ({str(err).splitlines()[0][:120]}); name layers such as attn.qkv, attn.proj, "
                          "mlp.fc1, mlp.fc2.") from None
    return [name for name, _ in model.named_parameters() if ".lora_" in name]


def has_lora(model: DiT | UNet) -> bool:
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def save_lora_pipeline(folder: Path, pipe: FilmDiffusionPipeline, base: Path | None) -> None:
    """``pipe`` saved without its adapter (the base weights, and whatever the config added, as trained), then the
    adapter beside it (the LoRA layers' current weights) and the record of its base."""
    denoiser = pipe.denoiser
    plain = type(denoiser).from_config(denoiser.config)
    plain.load_state_dict({name.replace(".base_layer", ""): tensor for name, tensor in denoiser.state_dict().items()
                           if ".lora_" not in name})
    pipe.register_modules(denoiser=plain)  # the same pipeline and config, only the denoiser without adapters
    try:
        pipe.save_pretrained(folder)
    finally:
        pipe.register_modules(denoiser=denoiser)
    denoiser.save_lora_adapter(folder, weight_name=LORA_WEIGHTS)
    config = denoiser.peft_config["default"]
    record = {"base": str(base) if base is not None else None, "rank": config.r, "alpha": config.lora_alpha,
              "targets": sorted(config.target_modules)}
    (folder / LORA_RECORD).write_text(json.dumps(record, indent=2) + "\n")

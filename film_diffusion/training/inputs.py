"""A batch as the denoiser takes it: the clean image or latent ``x0``, and the condition keywords with caption
dropout applied (the dropped samples get the null condition the pipeline samples with)."""

from __future__ import annotations

import torch

from film_diffusion.encoders import EmbeddingCache, TextEncoder
from film_diffusion.encoders.null import null_condition
from film_diffusion.training.config import ExperimentConfig
from film_diffusion.training.randomness import ShardedRandom


class ConditionMaker:
    """A batch's captions or labels -> the denoiser's condition keywords, with caption dropout replacing
    the dropped samples' condition by the null one the pipeline samples with (a learned null by the model
    itself, from ``null_mask``)."""

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
        if self.null_kind == "learned":  # applied inside the forward, where the null's weights are whole (FSDP)
            return {"condition": cond, "null_mask": drop}
        null = null_condition(self.encoder, self.null_kind, len(drop))
        return {"condition": cond.where(drop, null.to(self.device))}


def clean_latents(vae, batch: dict, random: ShardedRandom, device: torch.device) -> torch.Tensor:
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



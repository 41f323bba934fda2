"""Backbones: each one readable file that reads like its paper and exposes conditioning sites."""

from film_diffusion.backbones.dit import DIT_PRESETS, DiT, dit_from_preset
from film_diffusion.backbones.output import DenoiserOutput
from film_diffusion.backbones.unet import UNet

__all__ = ["DIT_PRESETS", "DenoiserOutput", "DiT", "UNet", "dit_from_preset"]

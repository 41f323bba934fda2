"""film-diffusion: conditioning diffusion models with FiLM, adaLN-Zero, cross-attention and concatenation."""

from film_diffusion.backbones.dit import DIT_PRESETS, DiT, dit_from_preset
from film_diffusion.backbones.unet import UNet
from film_diffusion.conditioning import METHODS, Condition

__all__ = ["DIT_PRESETS", "METHODS", "Condition", "DiT", "UNet", "dit_from_preset"]
__version__ = "0.1.0"

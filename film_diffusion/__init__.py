"""film-diffusion: conditioning diffusion models with FiLM, adaLN-Zero, cross-attention and concatenation.

The top-level names are imported on first use, so ``import film_diffusion.data`` does not pay for
importing diffusers.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DIT_PRESETS": "film_diffusion.backbones.dit",
    "DiT": "film_diffusion.backbones.dit",
    "dit_from_preset": "film_diffusion.backbones.dit",
    "UNet": "film_diffusion.backbones.unet",
    "METHODS": "film_diffusion.conditioning",
    "Condition": "film_diffusion.conditioning",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'film_diffusion' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

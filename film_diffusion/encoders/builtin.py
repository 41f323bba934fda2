"""The built-in small CLIP: the default text encoder, usable with no model download."""

from __future__ import annotations

from pathlib import Path

from film_diffusion.cache import cache_dir
from film_diffusion.encoders.base import Layer
from film_diffusion.encoders.clip_openclip import LOCAL_DIR, WEIGHTS_FILE, OpenCLIP
from film_diffusion.encoders.pretrain_clip import PretrainClipConfig, pretrain_clip

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "clip_builtin"


def cache_folder() -> Path:
    """Where a locally trained built-in CLIP is kept: ``clip_builtin`` in the film-diffusion cache."""
    return cache_dir() / "clip_builtin"


def builtin_clip(layer: Layer = "last", *, trainable: bool = False) -> OpenCLIP:
    """The small CLIP trained on the built-in scenes: the weights shipped in the package, else a cached
    copy, else trained now with the default config (about 10 minutes on 2 CPU cores) and cached."""
    for folder in (SHIPPED, cache_folder()):
        if (folder / WEIGHTS_FILE).is_file():
            return OpenCLIP(f"{LOCAL_DIR}{folder}", layer=layer, trainable=trainable)
    folder = pretrain_clip(PretrainClipConfig(output_dir=cache_folder()))
    return OpenCLIP(f"{LOCAL_DIR}{folder}", layer=layer, trainable=trainable)

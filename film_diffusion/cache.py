"""Where film-diffusion keeps what it trains on demand (oracles, the built-in CLIP)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """$FILM_DIFFUSION_CACHE, else $XDG_CACHE_HOME/film-diffusion, else ~/.cache/film-diffusion."""
    if os.environ.get("FILM_DIFFUSION_CACHE"):
        return Path(os.environ["FILM_DIFFUSION_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "film-diffusion"

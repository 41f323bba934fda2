"""Where the oracle for a resolution comes from: the weights shipped in the package
(``film_diffusion/assets/oracle_<R>.safetensors``, made by ``film-diffusion train-oracle``), else the user
cache; failing both, it is trained now and cached. Weights made for another renderer version are passed over."""

from __future__ import annotations

import logging
from pathlib import Path

from film_diffusion.cache import cache_dir
from film_diffusion.data.render import VERSION as RENDER_VERSION
from film_diffusion.evaluation.oracle import ShapesOracle, weights_metadata
from film_diffusion.evaluation.oracle_training import train_oracle

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def weights_name(resolution: int) -> str:
    return f"oracle_{resolution}.safetensors"


def load_oracle(resolution: int) -> ShapesOracle:
    """The oracle for ``resolution``: shipped weights, else cached ones, else trained now and cached."""
    for path in (ASSETS / weights_name(resolution), cache_dir() / weights_name(resolution)):
        if not path.is_file():
            continue
        version = weights_metadata(path).get("render_version")
        if version == RENDER_VERSION:
            return ShapesOracle.from_file(path)
        logger.warning("Ignoring %s: it was trained on renderer version %s, not %s.", path, version, RENDER_VERSION)
    path = cache_dir() / weights_name(resolution)
    logger.warning("No oracle for %d px yet; training one on the CPU (a few minutes) into %s.", resolution, path)
    oracle = train_oracle(resolution)
    oracle.save(path)
    return oracle

"""Judging generated images: the scene-reading oracle and distribution metrics."""

from film_diffusion.evaluation.metrics import frechet_distance
from film_diffusion.evaluation.oracle import ShapesOracle
from film_diffusion.evaluation.oracle_weights import load_oracle

__all__ = ["ShapesOracle", "frechet_distance", "load_oracle"]

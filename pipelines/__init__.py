"""diffusers pipelines for film-diffusion models, installed as ``film_diffusion.pipelines``."""

from film_diffusion.pipelines.pipeline_film_diffusion import FilmDiffusionPipeline
from film_diffusion.pipelines.schedulers import SCHEDULERS, scheduler_from_name

__all__ = ["SCHEDULERS", "FilmDiffusionPipeline", "scheduler_from_name"]

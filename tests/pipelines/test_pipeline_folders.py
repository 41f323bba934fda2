"""Pipeline folders: standard diffusers layout, bit-identical images after a round trip, diffusers' own loader."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, EulerDiscreteScheduler
from tiny_pipelines import builtin_text_pipeline, class_denoiser, text_denoiser, tiny_vae

from film_diffusion.encoders import TransformersCLIP
from film_diffusion.pipelines import FilmDiffusionPipeline


def images(pipe, **kwargs) -> torch.Tensor:
    return pipe(**kwargs, num_inference_steps=3, guidance_scale=2.0, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


def dit_builtin_clip():
    return builtin_text_pipeline("dit"), {"prompt": ["a large red circle", "a small blue star"]}


def unet_tiny_transformers_clip(clip_folder):
    encoder = TransformersCLIP(clip_folder)
    pipe = FilmDiffusionPipeline(text_denoiser("unet", encoder), EulerDiscreteScheduler(), text_encoder=encoder,
                                 null_condition="zeros")
    return pipe, {"prompt": ["a large red circle", "a small blue star"]}


def class_dit():
    return FilmDiffusionPipeline(class_denoiser(learn_sigma=True), DDIMScheduler()), {"class_labels": [3, 7]}


def latent_dit():
    return FilmDiffusionPipeline(class_denoiser(channels=4), DDIMScheduler(), vae=tiny_vae()), {"class_labels": [1, 2]}


@pytest.mark.parametrize("kind", ["dit-builtin-clip", "unet-transformers-clip", "class-dit", "latent-dit"])
def test_round_trip_gives_bit_identical_images(kind, tmp_path, tiny_transformers_clip):
    pipe, inputs = {"dit-builtin-clip": dit_builtin_clip, "class-dit": class_dit, "latent-dit": latent_dit,
                    "unet-transformers-clip": lambda: unet_tiny_transformers_clip(tiny_transformers_clip)}[kind]()
    before = images(pipe, **inputs)
    pipe.save_pretrained(tmp_path / "pipe")
    weights = sorted(p.name for p in (tmp_path / "pipe").rglob("*") if p.suffix in (".safetensors", ".bin", ".pt"))
    assert weights and all(name.endswith(".safetensors") for name in weights)
    loaded = FilmDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert loaded.config.null_condition == pipe.config.null_condition
    assert torch.equal(images(loaded, **inputs), before)


def test_folder_is_a_standard_diffusers_folder_that_needs_nothing_outside_it(tmp_path, tiny_transformers_clip):
    pipe, inputs = unet_tiny_transformers_clip(tiny_transformers_clip)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "FilmDiffusionPipeline"
    assert index["denoiser"] == ["film_diffusion.backbones.unet", "UNet"]
    assert index["text_encoder"] == ["film_diffusion.encoders.clip_transformers", "TransformersCLIP"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"] and index["vae"] == [None, None]
    assert index["null_condition"] == "zeros"
    text_encoder_files = {p.name for p in (tmp_path / "pipe" / "text_encoder").iterdir()}
    assert {"text_encoder.json", "config.json", "model.safetensors", "tokenizer_config.json"} <= text_encoder_files
    # The source CLIP folder may vanish: the pipeline folder holds its own copy.
    moved = tmp_path / "moved"
    (tmp_path / "pipe").rename(moved)
    for file in tiny_transformers_clip.iterdir():
        file.rename(tmp_path / file.name)
    try:
        assert torch.equal(images(FilmDiffusionPipeline.from_pretrained(moved), **inputs), images(pipe, **inputs))
    finally:
        for file in tmp_path.iterdir():
            if file.is_file():
                file.rename(tiny_transformers_clip / file.name)


def test_diffusers_generic_loader_opens_the_folder_through_custom_pipeline(tmp_path):
    pipe, inputs = dit_builtin_clip()
    pipe.save_pretrained(tmp_path / "pipe")
    folder = str(tmp_path / "pipe")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder)  # diffusers asks before running pipeline.py
    loaded = DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)
    assert type(loaded).__name__ == "FilmDiffusionPipeline"
    assert torch.equal(images(loaded, **inputs), images(pipe, **inputs))

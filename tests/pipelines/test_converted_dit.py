"""Converted DiT weights sample through our class pipeline as through diffusers' DiTPipeline."""

import pytest
import torch
from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel
from test_convert import randomize_, tiny_reference  # unit-gain weights, so float rounding is not amplified
from tiny_pipelines import SIZE, tiny_vae

from film_diffusion.convert import load_diffusers_dit, load_facebookresearch_dit
from film_diffusion.pipelines import FilmDiffusionPipeline


def tiny_diffusers_dit(num_classes: int) -> DiTTransformer2DModel:
    """A random diffusers DiT (learned sigma, as the paper's) whose blocks share one embedder."""
    model = randomize_(DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                             out_channels=8, num_layers=2, sample_size=SIZE, patch_size=2,
                                             num_embeds_ada_norm=num_classes, norm_eps=1e-6))
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    return model


@pytest.mark.parametrize("num_classes, guidance_scale", [(10, 1.0), (1000, 4.0)])
def test_converted_diffusers_dit_gives_diffusers_images(num_classes, guidance_scale):
    theirs = tiny_diffusers_dit(num_classes)
    vae = tiny_vae()
    reference = DiTPipeline(transformer=theirs, vae=vae, scheduler=DDIMScheduler())
    ours = FilmDiffusionPipeline(load_diffusers_dit(theirs), DDIMScheduler(), vae=vae)
    labels = [3, 0, 7]
    kwargs = dict(num_inference_steps=5, guidance_scale=guidance_scale, output_type="np")
    expected = reference(class_labels=labels, generator=torch.Generator().manual_seed(0), **kwargs).images
    got = ours(class_labels=labels, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert got.shape == expected.shape == (3, SIZE, SIZE, 3)
    assert abs(got - expected).max() < 1e-4
    # DiTPipeline's null class is a hard-coded 1000; ours is the model's own, which only then agrees.
    assert ours.denoiser.null_class_label == num_classes


def test_facebookresearch_checkpoint_samples_through_the_class_pipeline(tmp_path):
    torch.save(tiny_reference(input_size=SIZE).state_dict(), tmp_path / "DiT-tiny.pt")
    model = load_facebookresearch_dit(tmp_path / "DiT-tiny.pt", num_heads=4)
    pipe = FilmDiffusionPipeline(model, DDIMScheduler(), vae=tiny_vae())
    images = pipe(class_labels=[1, 9], num_inference_steps=4, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, SIZE, SIZE) and torch.isfinite(images).all() and images.std() > 1e-3

"""Tiny pipelines for the pipeline tests: random (not zero-initialised) models, so outputs carry signal."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from factories import randomize_

from film_diffusion import DiT, UNet
from film_diffusion.encoders import TextEncoder, builtin_clip
from film_diffusion.pipelines import FilmDiffusionPipeline

SIZE = 8


def text_denoiser(backbone: str, encoder: TextEncoder, channels: int = 3, perturb: float = 0.2,
                  **kwargs) -> torch.nn.Module:
    """``perturb``: the scale of the noise added to every weight (0: the model as built, which predicts zero)."""
    dims = {"cond_token_dim": encoder.token_dim, "cond_pooled_dim": encoder.pooled_dim}
    if backbone == "dit":
        model = DiT(sample_size=SIZE, patch_size=2, in_channels=channels, hidden_size=32, depth=2, num_heads=4,
                    conditioning=kwargs.pop("conditioning", ["adaln_zero", "cross_attention"]), **dims, **kwargs)
    else:
        model = UNet(sample_size=SIZE, in_channels=channels, block_out_channels=(16, 32), layers_per_block=1,
                     attention_levels=(1,), num_heads=2, norm_num_groups=8,
                     conditioning=kwargs.pop("conditioning", ["film", "cross_attention"]), **dims, **kwargs)
    return randomize_(model, scale=perturb).eval()


def class_denoiser(num_classes: int = 10, channels: int = 3, **kwargs) -> DiT:
    model = DiT(sample_size=SIZE, patch_size=2, in_channels=channels, hidden_size=32, depth=2, num_heads=4,
                conditioning="adaln_zero", num_classes=num_classes, **kwargs)
    return randomize_(model, scale=0.2).eval()


def tiny_vae() -> AutoencoderKL:
    """One level (no downsampling): 4-channel latents of the image's size."""
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(32,), latent_channels=4,
                        norm_num_groups=32, sample_size=SIZE)
    return vae.eval()


def builtin_text_pipeline(backbone: str = "dit", scheduler=None, **kwargs) -> FilmDiffusionPipeline:
    encoder = builtin_clip()
    return FilmDiffusionPipeline(text_denoiser(backbone, encoder, **kwargs), scheduler or DDIMScheduler(),
                                 text_encoder=encoder)


def noise(batch: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))

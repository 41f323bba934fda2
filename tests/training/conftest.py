"""A tiny AutoencoderKL saved locally, for latent training without a model hub."""

import pytest
import torch
from diffusers import AutoencoderKL


@pytest.fixture(scope="session")
def tiny_vae_folder(tmp_path_factory):
    """Two levels: 4-channel latents at half the image's side."""
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    folder = tmp_path_factory.mktemp("tiny-vae")
    vae.save_pretrained(folder)
    return folder

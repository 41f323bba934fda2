"""Training tests: a fresh Accelerate state per test, and a tiny AutoencoderKL saved locally (no hub)."""

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import AutoencoderKL


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state (mixed precision included); each run here starts anew, as a
    `film-diffusion train` process does."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


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

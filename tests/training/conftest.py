"""Training tests: a tiny AutoencoderKL and image folders saved locally (no hub)."""

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


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory):
    """Twelve 20x20 captioned images (metadata.jsonl), larger than the 16 px crop, for random augmentation."""
    import json

    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"picture number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder

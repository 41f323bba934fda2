"""Training the oracle on the CPU, on renders drawn fresh for every step from the oracle's own seed
stream and only from training scenes: every label is exact, no image is seen twice and no val or test
scene is ever drawn, so its accuracy on the dataset's test split measures reading, not memorising."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from film_diffusion.data.render import render
from film_diffusion.data.shapes import ShapesDataset, check_resolution, sample_objects, scene_split, to_tensor
from film_diffusion.data.vocabulary import CELLS
from film_diffusion.evaluation.oracle import ATTRIBUTES, ShapesOracle, encode_objects

TRAIN_STREAM = 7  # seed tag of training scenes; the dataset's splits use 0-2, so no image of theirs is seen
MAX_NOISE = 0.04  # per-image Gaussian noise (in [-1, 1] units) so slightly noisy samples still read well


class OracleScenes(Dataset):
    """Training-split scenes of 0 to 9 objects (every cell count, empty boards included) with their cell table."""

    def __init__(self, resolution: int, seed: int, length: int) -> None:
        self.resolution, self.seed, self.length = resolution, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        scene_rng, render_rng = (np.random.default_rng([self.seed, TRAIN_STREAM, index, s]) for s in (0, 1))
        objects = sample_objects(scene_rng, 0, len(CELLS))
        while scene_split(objects) != "train":  # a val or test scene is redrawn from the same stream
            objects = sample_objects(scene_rng, 0, len(CELLS))
        return to_tensor(render(objects, self.resolution, render_rng)), encode_objects(objects)


def oracle_loss(logits: dict[str, torch.Tensor], truth: torch.Tensor) -> torch.Tensor:
    """Occupancy of every cell, plus each attribute of the occupied cells."""
    present = truth[..., 0] == 1
    loss = F.binary_cross_entropy_with_logits(logits["occupied"], present.float())
    if present.any():
        loss = loss + sum(F.cross_entropy(logits[k][present], truth[..., i + 1][present]) for i, k in
                          enumerate(ATTRIBUTES))  # fmt: skip
    return loss


def train_oracle(
    resolution: int,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> ShapesOracle:
    """Train an oracle for ``resolution`` from scratch; ``workers`` render scenes beside the training."""
    check_resolution(resolution)
    torch.manual_seed(seed)
    oracle = ShapesOracle(resolution).train()
    scenes = OracleScenes(resolution, seed, steps * batch_size)
    loader = DataLoader(scenes, batch_size=batch_size, num_workers=workers, shuffle=False)
    optimizer = torch.optim.AdamW(oracle.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    bar = tqdm(loader, total=steps, disable=not progress, desc=f"oracle {resolution}px")
    for images, truth in bar:
        noise = torch.rand(len(images), 1, 1, 1) * MAX_NOISE
        loss = oracle_loss(oracle(images + noise * torch.randn_like(images)), truth)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return oracle.eval()


def evaluate_oracle(
    oracle: ShapesOracle, num_images: int = 2000, seed: int = 1, max_objects: int = 4
) -> dict[str, float]:
    """Accuracy on fresh scenes of 1 to ``max_objects`` objects (the benchmark's range) of the dataset's test
    split, which the oracle never trained on."""
    scenes = ShapesDataset(oracle.resolution, split="test", seed=seed, length=num_images, max_objects=max_objects)
    items = [scenes[i] for i in range(num_images)]
    return oracle.score(torch.stack([it["image"] for it in items]), [it["objects"] for it in items])

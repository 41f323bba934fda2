"""The data stream of a run: which dataset item each process reads at each micro-step, read so that a run's
batches are the same on 1 or N processes and after a resume; and, for latent models, the dataset encoded once by
the VAE (``vae.precompute``) and read back without decoding an image."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from film_diffusion.atomic import written
from film_diffusion.data.collate import collate
from film_diffusion.errors import UserError
from film_diffusion.training.config import ExperimentConfig

LATENTS = "latents.safetensors"


def batch_stream(dataset: Dataset, config: ExperimentConfig, accelerator: Accelerator, step: int) -> Iterator[dict]:
    """This process's micro-batches from optimizer step ``step`` on, endlessly."""
    accum = config.train.gradient_accumulation_steps
    micro = config.train.batch_size // (accelerator.num_processes * accum)
    sampler = StreamSampler(len(dataset), micro, accelerator.process_index, accelerator.num_processes,
                            seed=config.seed, start=step * accum)
    return iter(DataLoader(SeededItems(dataset, config.seed), batch_size=micro, sampler=sampler, collate_fn=collate,
                           num_workers=config.data.num_workers))


class StreamSampler(Sampler[tuple[int, int]]):
    """An endless stream of dataset indices, reshuffled each epoch from the seed; process ``rank`` of
    ``world`` takes its slice of each global micro-batch. ``start`` (micro-steps already taken) resumes
    mid-epoch at the very next index, without reading the skipped ones."""

    def __init__(self, length: int, micro_batch: int, rank: int, world: int, seed: int, start: int = 0):
        self.length, self.micro_batch, self.rank, self.world = length, micro_batch, rank, world
        self.seed, self.start = seed, start
        self._order: tuple[int, torch.Tensor] | None = None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))
            self._order = (epoch, order)
        return self._order[1]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(dataset index, position in the stream): the position seeds the item's random augmentation."""
        k = self.start
        while True:
            first = (k * self.world + self.rank) * self.micro_batch
            for position in range(first, first + self.micro_batch):
                epoch, offset = divmod(position, self.length)
                yield int(self._epoch_order(epoch)[offset]), position
            k += 1


class SeededItems(Dataset):
    """Reads item ``index`` with torch's global RNG seeded from (seed, stream position) for the call, so
    random augmentation (torchvision's flips and crops) is the same on any number of processes and
    after a resume, and differs between epochs."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, position = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone: torch.manual_seed would also queue a lazy seed call for each
            # accelerator type, formatting a stack trace each time (half the cost of a rendered scene).
            torch.default_generator.manual_seed(self.seed * 1_000_003 + position)
            return self.dataset[index]


def stored_latents(dataset: Dataset, path: Path, vae, accelerator: Accelerator) -> StoredLatents:
    """The dataset as stored VAE posteriors, encoded now unless a resumed run already did."""
    return StoredLatents(dataset, encode_dataset(path, dataset, vae, accelerator))


def encode_dataset(path: Path, dataset: Dataset, vae, accelerator: Accelerator, batch_size: int = 32) -> Path:
    """The VAE posterior (mean, std) of every image, with its caption and label, once per run (a resumed run
    reuses the file), written by the main process as safetensors under a temporary name."""
    if accelerator.is_main_process and not path.exists():
        tensors: dict[str, list[torch.Tensor]] = {"mean": [], "std": [], "label": []}
        captions: list[str] = []
        for start in tqdm(range(0, len(dataset), batch_size), desc="encoding latents"):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            with torch.no_grad():
                posterior = vae.encode(batch["image"].to(accelerator.device, vae.dtype)).latent_dist
            tensors["mean"].append(posterior.mean.cpu())
            tensors["std"].append(posterior.std.cpu())
            tensors["label"] += [batch["label"]] if "label" in batch else []
            captions += batch["caption"]
        with written(path) as partial:
            save_file({k: torch.cat(v).contiguous() for k, v in tensors.items() if v}, partial,
                      metadata={"captions": json.dumps(captions)})
    accelerator.wait_for_everyone()
    return path


class StoredLatents(Dataset):
    """Items read from :func:`encode_dataset`'s file alone: the stored posterior (``latent_mean``,
    ``latent_std``), the caption and, for class labels, the label; no image is read or decoded."""

    def __init__(self, dataset: Dataset, path: Path):
        with safe_open(path, "pt") as f:
            self.captions = json.loads(f.metadata()["captions"])
        self.stored = load_file(path)
        if len(self.captions) != len(dataset):
            raise UserError(f"'{path}' holds latents of {len(self.captions)} images, but the dataset has "
                            f"{len(dataset)}; delete it to encode the dataset again.")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        item = {"caption": self.captions[index], "latent_mean": self.stored["mean"][index],
                "latent_std": self.stored["std"][index]}
        return item | ({"label": int(self.stored["label"][index])} if "label" in self.stored else {})



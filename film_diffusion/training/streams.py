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
    order = epoch_order(dataset, config.data.shuffle_window, config.seed)
    sampler = StreamSampler(order, micro, accelerator.process_index, accelerator.num_processes, start=step * accum)
    return iter(DataLoader(SeededItems(dataset, config.seed), batch_size=micro, sampler=sampler, collate_fn=collate,
                           num_workers=config.data.num_workers))


def epoch_order(dataset: Dataset, window: int, seed: int) -> RandomOrder | WindowShuffle:
    """How a run visits ``dataset`` each epoch: chunk by chunk when it is read in chunks (sharded files),
    otherwise in a uniformly random order."""
    chunks = getattr(dataset, "chunk_sizes", None)
    return RandomOrder(len(dataset), seed) if chunks is None else WindowShuffle(chunks, window, seed)


class RandomOrder:
    """Epoch ``e`` visits the dataset in a uniformly random order drawn from ``seed + e``."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed = length, seed
        self._order: tuple[int, torch.Tensor] | None = None

    def __call__(self, epoch: int, offset: int) -> int:
        """The dataset index at place ``offset`` of epoch ``epoch``."""
        if self._order is None or self._order[0] != epoch:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))
            self._order = (epoch, order)
        return int(self._order[1][offset])


class WindowShuffle:
    """An epoch order that reads sharded files chunk by chunk: the chunks (parquet row groups, tar runs) in a
    fresh random order each epoch, their samples laid end to end, and each window of ``window`` consecutive
    places shuffled. A shuffle buffer of that size mixes as much, but its state depends on what came before;
    this order is a pure function of (seed, epoch, place), so a resumed or N-process run draws the same items
    without saving any buffer. Nothing of size dataset is held: one chunk order and one window at a time."""

    def __init__(self, chunk_sizes: list[int], window: int, seed: int):
        self.sizes, self.window, self.seed = torch.tensor(chunk_sizes), window, seed
        self.starts = torch.cumsum(self.sizes, 0) - self.sizes  # each chunk's first index, in file order
        self.length = int(self.sizes.sum())
        self._epoch: tuple[int, torch.Tensor, torch.Tensor] | None = None  # epoch, chunk order, its place ends
        self._window: tuple[tuple[int, int], torch.Tensor] | None = None

    def __call__(self, epoch: int, offset: int) -> int:
        if self._epoch is None or self._epoch[0] != epoch:
            chunks = torch.randperm(len(self.sizes), generator=torch.Generator().manual_seed(self.seed + epoch))
            self._epoch = (epoch, chunks, torch.cumsum(self.sizes[chunks], 0))
        _, chunks, ends = self._epoch
        block, within = divmod(offset, self.window)
        if self._window is None or self._window[0] != (epoch, block):
            size = min(self.window, self.length - block * self.window)
            seed = ((self.seed * 1_000_003 + epoch) * 1_000_003 + block) % 2**63  # any seed, within manual_seed's range
            self._window = ((epoch, block), torch.randperm(size, generator=torch.Generator().manual_seed(seed)))
        place = block * self.window + int(self._window[1][within])
        k = int(torch.searchsorted(ends, place, right=True))  # the chunk at this place
        return int(self.starts[chunks[k]] + place - (ends[k] - self.sizes[chunks[k]]))


class StreamSampler(Sampler[tuple[int, int]]):
    """An endless stream of dataset indices, epoch after epoch in ``order``; process ``rank`` of ``world``
    takes its slice of each global micro-batch. ``start`` (micro-steps already taken) resumes mid-epoch at
    the very next index, without reading the skipped ones."""

    def __init__(self, order: RandomOrder | WindowShuffle, micro_batch: int, rank: int, world: int, start: int = 0):
        self.order, self.micro_batch, self.rank, self.world, self.start = order, micro_batch, rank, world, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(dataset index, position in the stream): the position seeds the item's random augmentation."""
        k = self.start
        while True:
            first = (k * self.world + self.rank) * self.micro_batch
            for position in range(first, first + self.micro_batch):
                yield self.order(*divmod(position, self.order.length)), position
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



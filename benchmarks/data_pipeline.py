"""Is the data pipeline ever the bottleneck? A training step fed by the real pipeline against the same
step on a batch already in memory, side by side in one process.

    python benchmarks/data_pipeline.py                    # DiT-S/2, 32 px built-in scenes, bf16
    python benchmarks/data_pipeline.py --workers 1 --batch 64

The real pipeline: a shuffled ``DataLoader`` over the built-in scenes (rendered on the fly) with
``collate``, and caption embeddings from an ``EmbeddingCache`` over the built-in CLIP whose file was
written ahead of training by ``save_embeddings`` (the frozen encoder never runs in the loop). The
model: DiT-S/2 in pixel space with adaLN-Zero and cross-attention on the caption tokens. Both steps
take turns after a warm-up; the script prints their medians and the pipeline's share of the step.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import interleaved_medians
from torch.utils.data import DataLoader

from film_diffusion import Condition, DiT
from film_diffusion.data.collate import collate
from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.encoders import builtin_clip
from film_diffusion.encoders.cache import EmbeddingCache, save_embeddings


def endless(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: render in the loop)")
    parser.add_argument("--scenes", type=int, default=20_000, help="training scenes whose captions are pre-encoded")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()

    dataset = ShapesDataset(32, "train", seed=0, length=args.scenes)
    encoder = builtin_clip()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        captions = [dataset.scene(i)[1] for i in range(len(dataset))]
        file = save_embeddings(encoder, captions, Path(tmp) / "captions.safetensors")
        print(f"pre-encoded {len(set(captions))} distinct captions of {len(captions)} scenes "
              f"in {time.perf_counter() - start:.1f} s")
        cache = EmbeddingCache(encoder, file=file)

    torch.manual_seed(0)
    model = DiT(sample_size=32, patch_size=2, in_channels=3, hidden_size=384, depth=12, num_heads=6,
                conditioning=["adaln_zero", "cross_attention"], cond_token_dim=cache.token_dim,
                cond_pooled_dim=cache.pooled_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    precision = torch.autocast("cpu", torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()

    def train_on(images: torch.Tensor, condition: Condition) -> None:
        noise = torch.randn_like(images)
        t = torch.randint(0, 1000, (images.shape[0],))
        noisy = images + noise * (t.float() / 1000)[:, None, None, None]
        with precision:
            loss = F.mse_loss(model(noisy, t, condition=condition).sample.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers, collate_fn=collate,
                        drop_last=True, persistent_workers=args.workers > 0)
    batches = endless(loader)
    fixed = next(batches)
    fixed_condition = cache.encode(fixed["caption"])
    data_seconds: list[float] = []

    def pipeline_step() -> None:
        start = time.perf_counter()
        batch = next(batches)
        condition = cache.encode(batch["caption"])
        data_seconds.append(time.perf_counter() - start)
        train_on(batch["image"], condition)

    steps: dict[str, Callable[[], None]] = {
        "model only": lambda: train_on(fixed["image"], fixed_condition),
        "real pipeline": pipeline_step,
    }
    medians = interleaved_medians(steps, args.repeats, args.warmup, torch.device("cpu"))
    print(f"DiT-S/2 adaLN-Zero + cross-attention, 32 px, batch {args.batch}, {args.precision}, "
          f"{args.workers} workers, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, seconds in medians.items():
        print(f"  {name}: {seconds * 1e3:.0f} ms/step, {args.batch / seconds:.1f} images/s")
    print(f"  waiting for data and captions: median {statistics.median(data_seconds[args.warmup :]) * 1e3:.1f} ms/step")
    print(f"  real pipeline throughput / model-only throughput: {medians['model only'] / medians['real pipeline']:.3f}")


if __name__ == "__main__":
    main()

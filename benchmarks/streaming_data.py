"""Sharded datasets against the image folder: how long a run takes to start on 100,000 images, and how many images per
second each loader feeds, on the same images.

    python benchmarks/streaming_data.py                          # 100,000 built-in scenes at 32 px
    python benchmarks/streaming_data.py --images 20000 --workers 2 --data-dir /tmp/streaming-data

The images (built-in training scenes with their captions, as PNG) are written once into ``--data-dir`` in three
forms: a captioned folder (``metadata.jsonl``), Hugging Face parquet (``datasets``' ``Image`` feature, row groups of
100, as ``datasets`` writes image data) and WebDataset tars of 1,000 samples. Start: ``film-diffusion train`` on
``configs/quickstart.yaml`` with the data swapped, from its launch to the first logged step (build, data index,
first batch, one step of the quickstart's model). Beside it, the data's own part of that: building the dataset and
its first batch, in this process. Throughput: the run's own data stream (shuffled order, decode, crop, collate),
batches of ``--batch``, the loaders taking turns (medians over ``--repeats`` rounds) so that machine load hits each
alike.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import torch
import webdataset
from timing import interleaved_medians
from torch.utils.data import DataLoader
from torchvision.transforms.functional import to_pil_image
from tqdm.auto import tqdm

from film_diffusion.data.collate import collate
from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.training.build import build_dataset
from film_diffusion.training.config import load_experiment
from film_diffusion.training.streams import SeededItems, StreamSampler, epoch_order

KINDS = {"folder": "folder", "hf": "parquet", "webdataset": "tars"}
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def write_data(root: Path, images: int) -> None:
    """The scenes as a folder, parquet files and tar shards (skipped where ``root`` already has them)."""
    done = root / f"complete-{images}"
    if done.exists():
        return
    scenes = ShapesDataset(32, "train", seed=0, length=images)
    (root / "folder").mkdir(parents=True, exist_ok=True)
    (root / "parquet").mkdir(exist_ok=True)
    (root / "tars").mkdir(exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    rows, lines, per_file = [], [], 10_000
    tar = None
    for i in tqdm(range(images), desc="writing images"):
        item = scenes[i]
        buffer = io.BytesIO()
        to_pil_image((item["image"] + 1) / 2).save(buffer, format="PNG")
        data = buffer.getvalue()
        (root / "folder" / f"{i:07d}.png").write_bytes(data)
        lines.append(json.dumps({"file_name": f"{i:07d}.png", "text": item["caption"]}))
        rows.append({"image": {"bytes": data, "path": None}, "text": item["caption"]})
        if len(rows) == per_file or i == images - 1:
            table = datasets.Dataset.from_list(rows, features=features)
            table.to_parquet(str(root / "parquet" / f"train-{i // per_file:05d}.parquet"), batch_size=100)
            rows = []
        if i % 1000 == 0:
            tar = tar and tar.close()
            tar = webdataset.TarWriter(str(root / "tars" / f"train-{i // 1000:06d}.tar"))
        tar.write({"__key__": f"{i:07d}", "png": data, "txt": item["caption"]})
    tar.close()
    (root / "folder" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    done.touch()


def start_seconds(name: str, root: Path, overrides: list[str]) -> float:
    """Seconds from launching ``film-diffusion train`` to its first logged step."""
    with tempfile.TemporaryDirectory() as out:
        metrics = Path(out) / "run" / "metrics.jsonl"
        command = [sys.executable, "-m", "film_diffusion.cli", "train", str(QUICKSTART), f"data.name={name}",
                   f"data.root={root}", "train.max_steps=2", "train.log_every=1", "train.sample_every=0",
                   "train.eval_every=0", f"output_dir={Path(out) / 'run'}", *overrides]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not (metrics.exists() and metrics.read_text().strip()):
            if process.poll() is not None:
                raise SystemExit(f"film-diffusion train failed on {name}: {process.stderr.read()[-2000:]}")
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        process.wait()
        return seconds


def batches(name: str, root: Path, batch: int, workers: int) -> tuple[Iterator[dict], float]:
    """The data stream a run reads (order, decode, crop, collate), endlessly, and the seconds it took to build
    the dataset and give its first batch."""
    start = time.perf_counter()
    config = load_experiment({}, [f"data.name={name}", f"data.root={root}"])
    dataset = build_dataset(config.data, config.condition)
    order = epoch_order(dataset, config.data.shuffle_window, seed=0)
    loader = DataLoader(SeededItems(dataset, 0), batch_size=batch, sampler=StreamSampler(order, batch, 0, 1),
                        collate_fn=collate, num_workers=workers, persistent_workers=workers > 0)
    stream = iter(loader)
    next(stream)
    return stream, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "film-diffusion-streaming")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per loader")
    parser.add_argument("--repeats", type=int, default=30, help="timed batches per loader (median reported)")
    parser.add_argument("--mixed-precision", default=None, choices=["no", "bf16"],
                        help="train.mixed_precision of the start run (default: the quickstart's, float32; bf16 is "
                             "faster on a CPU with bf16 instructions and many times slower on one without)")
    args = parser.parse_args()

    root = args.data_dir / str(args.images)
    write_data(root, args.images)
    print(f"{args.images:,} images of 32x32 at {root}; torch threads {torch.get_num_threads()}\n")
    overrides = [] if args.mixed_precision is None else [f"train.mixed_precision={args.mixed_precision}"]
    starts = {name: start_seconds(name, root / folder, overrides) for name, folder in KINDS.items()}
    streams = {name: batches(name, root / folder, args.batch, args.workers) for name, folder in KINDS.items()}
    seconds = interleaved_medians({name: (lambda s=stream[0]: next(s)) for name, stream in streams.items()},
                                  repeats=args.repeats, warmup=3, device=torch.device("cpu"))
    print("| data.name | launch to first step (s) | data: build + first batch (s) | images/s fed | ratio to folder |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in KINDS:
        rate, ratio = args.batch / seconds[name], seconds["folder"] / seconds[name]
        print(f"| {name} | {starts[name]:.1f} | {streams[name][1]:.2f} | {rate:,.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()

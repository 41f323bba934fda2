"""How fast the built-in scenes render, and how exactly the shipped oracles read them back.

    python benchmarks/data_and_oracle.py
    python benchmarks/data_and_oracle.py --render-images 5000 --eval-images 10000

Everything runs on one CPU thread (``torch.set_num_threads(1)``). Rendering is timed per dataset
item (scene, caption, anti-aliased render, tensor), best of three passes. Accuracy is measured on
fresh scenes of the test split with a seed the oracles never trained on, and on pure noise images
scored against the same ground truths (where a sound oracle must score near chance or below).
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time

import torch

from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.evaluation.oracle_weights import load_oracle

KEYS = ("count", "color", "shape", "size", "position", "all")


def render_speed(resolution: int, images: int) -> float:
    """Images per second, best of three passes over ``images`` items."""
    dataset = ShapesDataset(resolution, length=images)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(images):
            dataset[i]
        best = min(best, time.perf_counter() - start)
    return images / best


def accuracy_rows(resolution: int, images: int, seed: int) -> list[tuple[str, dict[str, float]]]:
    oracle = load_oracle(resolution)
    rows = []
    for label, kwargs in [("1-4 objects", {"max_objects": 4}), ("6-9 objects", {"min_objects": 6, "max_objects": 9})]:
        # the benchmark's range (1-4) with uniform noise beside it, then crowded boards
        dataset = ShapesDataset(resolution, split="test", seed=seed, length=images, **kwargs)
        items = [dataset[i] for i in range(images)]
        real = torch.stack([it["image"] for it in items])
        objects = [it["objects"] for it in items]
        rows.append((label, oracle.score(real, objects)))
        if "min_objects" not in kwargs:
            noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
            rows.append(("uniform noise", oracle.score(noise, objects)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render-images", type=int, default=2000, help="items per timing pass")
    parser.add_argument("--eval-images", type=int, default=5000, help="fresh scenes per accuracy row")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the fresh test scenes")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)

    print("| resolution | rendered images/s (1 thread) |\n| --- | --- |")
    for resolution in args.resolutions:
        print(f"| {resolution} | {render_speed(resolution, args.render_images):.0f} |")

    print(f"\n| resolution | scenes ({args.eval_images}) | " + " | ".join(KEYS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in KEYS) + " |")
    for resolution in args.resolutions:
        for label, scores in accuracy_rows(resolution, args.eval_images, args.seed):
            print(f"| {resolution} | {label} | " + " | ".join(f"{scores[k]:.4f}" for k in KEYS) + " |")


if __name__ == "__main__":
    main()

"""At what noise level a model loses an attribute: image-to-image from the true renders of held-out scenes.

    python benchmarks/shape_by_noise.py runs/quickstart runs/quickstart_dit          # val, 200 scenes
    python benchmarks/shape_by_noise.py RUN ... --strengths 0.2 0.5 0.8 1 --count 100

Each one-object val scene (never trained on, its caption in the full wording) is noised to ``strength`` of the way
back along the schedule and denoised with its caption by the run's own sampler, steps and guidance
(``strength`` 1 is text-to-image from the same noise); the oracle then scores what comes out. A model that keeps an
attribute at low strength but loses it at high strength can draw it but does not decide it from the caption while
the image is still mostly noise; one that loses it at low strength cannot draw it at all. Strength 0 scores the
true renders themselves: the oracle's ceiling. Prints one table per run, scored on val (a diagnosis, not a
figure to report).
"""

from __future__ import annotations

import argparse

import torch

from film_diffusion.evaluation.oracle_weights import load_oracle
from film_diffusion.evaluation.quality import held_out_scenes
from film_diffusion.sample import load_pipeline

ATTRIBUTES = ("color", "shape", "size", "position", "all")


@torch.no_grad()
def scores_by_strength(path: str, strengths: list[float], count: int, batch_size: int) -> dict[float, dict]:
    """The oracle's scores of the run's image-to-image outputs at each strength, on ``count`` val scenes."""
    pipe = load_pipeline(path)
    pipe.set_progress_bar_config(disable=True)
    resolution = pipe.denoiser.config.sample_size
    scenes = held_out_scenes(resolution, count, seed=0, holdout=None)
    items = [scenes[i] for i in range(count)]
    real = torch.stack([item["image"] for item in items])  # [-1, 1]
    captions, objects = [item["caption"] for item in items], [item["objects"] for item in items]
    oracle = load_oracle(resolution)
    table = {}
    for strength in strengths:
        if strength == 0:
            table[strength] = oracle.score(real, objects)
            continue
        fakes = []
        for start in range(0, count, batch_size):
            chunk = slice(start, start + batch_size)
            images = pipe(prompt=captions[chunk], image=(real[chunk] + 1) / 2, strength=strength,
                          output_type="pt", generator=torch.Generator().manual_seed(start)).images
            fakes.append(images * 2 - 1)
        table[strength] = oracle.score(torch.cat(fakes), objects)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or pipeline folders of text-conditioned runs")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--count", type=int, default=200, help="val scenes (default 200)")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    for path in args.runs:
        table = scores_by_strength(path, args.strengths, args.count, args.batch_size)
        print(f"\n{path} ({args.count} val scenes, image-to-image from their true renders)\n")
        print("| strength | " + " | ".join(ATTRIBUTES) + " |")
        print("| ---: | " + " | ".join("---:" for _ in ATTRIBUTES) + " |")
        for strength, scores in table.items():
            print(f"| {strength:g} | " + " | ".join(f"{scores[k]:.3f}" for k in ATTRIBUTES) + " |")


if __name__ == "__main__":
    main()

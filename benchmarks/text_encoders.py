"""How well the built-in CLIP reads held-out scenes, and what the embedding cache saves.

    python benchmarks/text_encoders.py
    python benchmarks/text_encoders.py --clip local-dir:runs/clip_builtin --scenes 1000

Accuracy: counterfactual caption retrieval per attribute and image-to-caption top-1 among 100 pairs,
on scenes of the test split with a seed the CLIP never trained on. Cache: encoder passes and seconds
for encoding the same captions twice, directly and through ``EmbeddingCache``. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time

from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.encoders import EmbeddingCache, OpenCLIP, builtin_clip
from film_diffusion.encoders.clip_retrieval import evaluate_clip
from film_diffusion.encoders.counterfactuals import ATTRIBUTES


def cache_savings(encoder: OpenCLIP, captions: list[str]) -> list[tuple[str, int, float]]:
    """(how, encoder passes, seconds) for encoding ``captions`` twice."""
    calls = 0
    encode = encoder._encode

    def counted(batch: list[str]):
        nonlocal calls
        calls += 1
        return encode(batch)

    encoder._encode = counted
    rows = []
    for how, target in (("direct", encoder), ("EmbeddingCache", EmbeddingCache(encoder, batch_size=len(captions)))):
        calls, start = 0, time.perf_counter()
        for _ in range(2):
            target.encode(captions)
        rows.append((how, calls, time.perf_counter() - start))
    del encoder._encode
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", help="an OpenCLIP model name such as local-dir:FOLDER (default: the built-in CLIP)")
    parser.add_argument("--scenes", type=int, default=500, help="held-out scenes to score (default 500)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out scenes (default 1)")
    parser.add_argument("--max-objects", type=int, default=4, help="objects per scene, 1 to N (default 4, as the "
                        "built-in CLIP trains)")
    args = parser.parse_args()

    encoder = OpenCLIP(args.clip) if args.clip else builtin_clip()
    resolution = encoder.model.visual.preprocess_cfg["size"]
    size = resolution if isinstance(resolution, int) else resolution[0]
    held_out = ShapesDataset(size, "test", args.seed, max_objects=args.max_objects)
    metrics = evaluate_clip(encoder, held_out, scenes=args.scenes, seed=args.seed)
    print("| " + " | ".join(ATTRIBUTES) + " | image-to-caption top-1 (of 100) |")
    print("|" + " --- |" * (len(ATTRIBUTES) + 1))
    print("| " + " | ".join(f"{metrics[f'retrieval/{a}']:.3f}" for a in ATTRIBUTES)
          + f" | {metrics['image_to_caption_top1']:.3f} |")  # fmt: skip
    print(f"\n({args.scenes} scenes; count scored on the {metrics['scenes/count']} that have a count variant)\n")

    captions = [held_out.scene(i)[1] for i in range(1000)]
    print(f"| encoding {len(set(captions))} distinct captions twice | encoder passes | seconds |")
    print("| --- | --- | --- |")
    for how, calls, seconds in cache_savings(encoder, captions):
        print(f"| {how} | {calls} | {seconds:.2f} |")


if __name__ == "__main__":
    main()

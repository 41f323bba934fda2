"""Cost against resolution: the FFNified DiT against the attention DiT of the same width and depth.

    python benchmarks/token_mixer_cost.py                  # CPU, bf16 autocast, 32 / 64 / 128 px
    python benchmarks/token_mixer_cost.py --device cuda    # on a GPU

Both DiTs take class labels through adaLN-Zero in pixel space (3 channels, patch 2), so that only the
token mixer differs. For each resolution the two models take turns (``timing.interleaved_medians``):
a training step (forward, MSE, backward, fused AdamW) and a sampling step (forward under ``no_grad``;
the FFNified model fused, as it samples). The table gives median ms, peak memory of the training step,
the FFNified speed-up, and how each grows with the token count: the exponent ``a`` in ms ~ tokens^a
between successive resolutions (1 is linear, 2 quadratic).
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from speed_vs_diffusers import make_sample_step, make_train_step, step_peak_memory
from timing import interleaved_medians

from film_diffusion import DiT
from film_diffusion.cpu_memory import keep_freed_memory

MIXERS = ("attention", "ffnified")


def build(mixer: str, size: int, width: int, depth: int, heads: int) -> DiT:
    torch.manual_seed(0)
    return DiT(sample_size=size, patch_size=2, in_channels=3, hidden_size=width, depth=depth, num_heads=heads,
               num_classes=10, conditioning="adaln_zero", token_mixer=mixer)


def call(model: DiT, batch: dict) -> torch.Tensor:
    return model(batch["x"], batch["t"], class_labels=batch["y"]).sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="32,64,128", help="image sides in pixels")
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    rows = []
    for size in map(int, args.sizes.split(",")):
        g = torch.Generator().manual_seed(0)
        batch = {"x": torch.randn(args.batch, 3, size, size, generator=g).to(device),
                 "t": torch.randint(0, 1000, (args.batch,), generator=g).to(device),
                 "y": torch.randint(0, 10, (args.batch,), generator=g).to(device)}
        models = {m: build(m, size, args.width, args.depth, args.heads).to(device) for m in MIXERS}
        train = {m: make_train_step(models[m], call, batch, device, dtype) for m in MIXERS}
        sampling = {m: copy.deepcopy(models[m]).fuse().eval() for m in MIXERS}
        sample = {m: make_sample_step(sampling[m], call, batch, device, dtype) for m in MIXERS}
        train_ms = interleaved_medians({m: s.run for m, s in train.items()}, args.repeats, args.warmup, device)
        sample_ms = interleaved_medians({m: s.run for m, s in sample.items()}, args.repeats, args.warmup, device)
        memory = {m: step_peak_memory(train[m], device) for m in MIXERS}
        rows.append({"size": size, "tokens": (size // 2) ** 2, "train": train_ms, "sample": sample_ms,
                     "memory": memory, "params": {m: sum(p.numel() for p in models[m].parameters()) for m in MIXERS}})
        print(f"{size} px: " + ", ".join(f"{m} train {1e3 * train_ms[m]:.1f} ms, sample {1e3 * sample_ms[m]:.1f} ms"
                                         for m in MIXERS), flush=True)

    print(f"\nDiT width {args.width}, depth {args.depth}, patch 2, batch {args.batch}, {args.dtype}, {args.device}; "
          f"parameters: attention {rows[0]['params']['attention'] / 1e6:.2f}M, "
          f"ffnified {rows[0]['params']['ffnified'] / 1e6:.2f}M\n")
    print("| px | tokens | train ms attention | train ms ffnified | train speed-up | sample ms attention "
          "| sample ms ffnified | sample speed-up | peak MB attention | peak MB ffnified | growth a (train) "
          "attention / ffnified |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for i, row in enumerate(rows):
        tr, sa, mem = row["train"], row["sample"], row["memory"]
        growth = "-"
        if i:
            prev = rows[i - 1]
            ratio = math.log(row["tokens"] / prev["tokens"])
            growth = " / ".join(f"{math.log(tr[m] / prev['train'][m]) / ratio:.2f}" for m in MIXERS)
        print(f"| {row['size']} | {row['tokens']} | {1e3 * tr['attention']:.1f} | {1e3 * tr['ffnified']:.1f} | "
              f"{tr['attention'] / tr['ffnified']:.2f}x | {1e3 * sa['attention']:.1f} | {1e3 * sa['ffnified']:.1f} | "
              f"{sa['attention'] / sa['ffnified']:.2f}x | {mem['attention'] / 2**20:.0f} | "
              f"{mem['ffnified'] / 2**20:.0f} | {growth} |")


if __name__ == "__main__":
    main()

"""Our DiT and U-Net against diffusers' own models at the same size, side by side in one process.

    python benchmarks/speed_vs_diffusers.py                 # CPU, fp32 and bf16 autocast
    python benchmarks/speed_vs_diffusers.py --device cuda   # on a GPU

Pairs: our DiT with adaLN-Zero and class labels vs ``DiTTransformer2DModel``; our U-Net with
cross-attention (scale-shift timestep) vs ``UNet2DConditionModel`` (``resnet_time_scale_shift=
"scale_shift"``, linear projections, the same levels, channels and heads). For each pair and
precision it times a training step (forward, MSE, backward, fused AdamW) and a sampling step (forward under
``no_grad``), interleaving the two models step by step after a warm-up, and reports medians,
our/diffusers throughput and peak-memory ratios, and our training step's achieved FLOP/s against the
peak of a large matrix product measured in the same process. Prints a Markdown table.

On the CPU both models run with freed memory kept in the process (``keep_freed_memory``, as our trainer
runs; ``--glibc-defaults`` to skip): with glibc's defaults every step faults its memory in again, and how
much depends on what the process ran before, so one model's steps would change the other's timings.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, UNet2DConditionModel
from timing import interleaved_medians, synchronize
from torch.utils.flop_counter import FlopCounterMode

from film_diffusion import Condition, DiT, UNet
from film_diffusion.cpu_memory import keep_freed_memory
from film_diffusion.studies.model_cost import peak_memory_bytes


@dataclass
class Pair:
    """Two models at the same size and one way to call each on the same batch."""

    name: str
    label: str  # short, for the table
    build_ours: Callable[[], torch.nn.Module]
    build_theirs: Callable[[], torch.nn.Module]
    call_ours: Callable[[torch.nn.Module, dict], torch.Tensor]
    call_theirs: Callable[[torch.nn.Module, dict], torch.Tensor]
    make_batch: Callable[[int, torch.device], dict]


def dit_pair(depth: int, hidden: int, heads: int, patch: int, size: int, channels: int, classes: int) -> Pair:
    def ours() -> torch.nn.Module:
        return DiT(sample_size=size, patch_size=patch, in_channels=channels, hidden_size=hidden, depth=depth,
                   num_heads=heads, num_classes=classes, conditioning="adaln_zero")

    def theirs() -> torch.nn.Module:
        return DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=hidden // heads,
                                     in_channels=channels, num_layers=depth, sample_size=size, patch_size=patch,
                                     num_embeds_ada_norm=classes)

    def batch(n: int, device: torch.device) -> dict:
        g = torch.Generator().manual_seed(0)
        return dict(x=torch.randn(n, channels, size, size, generator=g).to(device),
                    t=torch.randint(0, 1000, (n,), generator=g).to(device),
                    y=torch.randint(0, classes, (n,), generator=g).to(device))

    return Pair(f"DiT depth {depth}, width {hidden}, patch {patch}, {size} px, adaLN-Zero + labels",
                f"DiT d{depth} w{hidden} p{patch}", ours, theirs,
                lambda m, b: m(b["x"], b["t"], class_labels=b["y"]).sample,
                lambda m, b: m(b["x"], timestep=b["t"], class_labels=b["y"]).sample, batch)


def unet_pair(channels: tuple[int, ...], attention_levels: tuple[int, ...], heads: int, size: int, in_ch: int,
              token_dim: int, tokens: int) -> Pair:
    def ours() -> torch.nn.Module:
        return UNet(sample_size=size, in_channels=in_ch, block_out_channels=channels, layers_per_block=2,
                    attention_levels=attention_levels, num_heads=heads, conditioning=["cross_attention"],
                    cond_token_dim=token_dim)

    def theirs() -> torch.nn.Module:
        levels = range(len(channels))
        return UNet2DConditionModel(
            sample_size=size, in_channels=in_ch, out_channels=in_ch, block_out_channels=channels,
            layers_per_block=2, cross_attention_dim=token_dim, attention_head_dim=heads,
            down_block_types=tuple("CrossAttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in levels),
            up_block_types=tuple("CrossAttnUpBlock2D" if i in attention_levels else "UpBlock2D"
                                 for i in reversed(levels)),
            use_linear_projection=True, resnet_time_scale_shift="scale_shift")

    def batch(n: int, device: torch.device) -> dict:
        g = torch.Generator().manual_seed(0)
        return dict(x=torch.randn(n, in_ch, size, size, generator=g).to(device),
                    t=torch.randint(0, 1000, (n,), generator=g).to(device),
                    tokens=torch.randn(n, tokens, token_dim, generator=g).to(device))

    return Pair(f"U-Net channels {list(channels)}, attention at levels {list(attention_levels)}, {size} px, "
                "cross-attention", f"U-Net {'-'.join(map(str, channels))}", ours, theirs,
                lambda m, b: m(b["x"], b["t"], condition=Condition(tokens=b["tokens"])).sample,
                lambda m, b: m(b["x"], b["t"], encoder_hidden_states=b["tokens"]).sample, batch)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class Step:
    """One timed call, and what it keeps alive between calls (for the memory tracker)."""

    run: Callable[[], None]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None


def make_train_step(model, call, batch, device, dtype) -> Step:
    # The fused AdamW kernel, for both models: what a trainer should use, and without it the step of a
    # large weight is mostly temporaries (on the CPU, fresh pages for every tensor above 32 MB).
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    target = torch.randn_like(batch["x"])

    def step() -> None:
        with autocast(device, dtype):
            loss = F.mse_loss(call(model, batch).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # no gradients held through the next forward pass

    return Step(step, model, optimizer)


def make_sample_step(model, call, batch, device, dtype) -> Step:
    def step() -> None:
        with torch.no_grad(), autocast(device, dtype):
            call(model, batch)

    return Step(step, model)


def step_peak_memory(step: Step, device: torch.device) -> int:
    """Peak memory of a warmed-up step, weights, gradients and optimizer state included (see
    ``film_diffusion.studies.model_cost.peak_memory_bytes``)."""
    return peak_memory_bytes(step.run, device, [step.model, *([step.optimizer] if step.optimizer else [])])


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """FLOP/s of a large square matrix product: the hardware limit our training step is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def training_flops(model, call, batch, device, dtype) -> int:
    """FLOPs of one forward and backward pass, counted by torch.utils.flop_counter."""
    counter = FlopCounterMode(display=False)
    with counter, autocast(device, dtype):
        loss = call(model, batch).float().square().mean()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


PAIRS = {
    "cpu": {"dit": partial(dit_pair, depth=12, hidden=384, heads=6, patch=2, size=32, channels=4, classes=1000),
            "unet": partial(unet_pair, channels=(64, 128, 128), attention_levels=(1, 2), heads=4, size=32, in_ch=4,
                    token_dim=256, tokens=16)},
    "cuda": {"dit": partial(dit_pair, depth=28, hidden=1152, heads=16, patch=2, size=32, channels=4, classes=1000),
             "unet": partial(unet_pair, channels=(320, 640, 1280, 1280), attention_levels=(0, 1, 2), heads=8, size=64,
                     in_ch=4, token_dim=768, tokens=77)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4 on the CPU, 32 on a GPU)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--models", default="dit,unet", help="comma-separated: dit, unet")
    parser.add_argument("--modes", default="train,sample", help="comma-separated: train, sample")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="on the CPU, leave glibc's allocator as it is instead of keeping freed memory")
    args = parser.parse_args()
    device = torch.device(args.device)
    kept = device.type == "cpu" and not args.glibc_defaults and keep_freed_memory()
    batch_size = args.batch or (4 if device.type == "cpu" else 32)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    peak_n = 2048 if device.type == "cpu" else 8192
    precisions = args.precisions.split(",")
    peaks = {name: matmul_peak_flops(device, torch.float32 if dtypes[name] is None else dtypes[name], peak_n)
             for name in precisions}
    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"threads {torch.get_num_threads()}, batch {batch_size}, torch {torch.__version__}"
          + (", freed memory kept" if kept else ""))
    print("matrix-product peak: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in peaks.items()))
    rows = []
    for factory in (PAIRS[device.type][name] for name in args.models.split(",")):
        pair = factory()
        torch.manual_seed(0)
        ours, theirs = pair.build_ours().to(device), pair.build_theirs().to(device)
        n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
        print(f"\n{pair.name}: params ours {n_ours / 1e6:.2f}M, diffusers {n_theirs / 1e6:.2f}M")
        batch = pair.make_batch(batch_size, device)
        for precision in precisions:
            dtype = dtypes[precision]
            for mode in args.modes.split(","):
                make = {"train": make_train_step, "sample": make_sample_step}[mode]
                steps = {"ours": make(ours, pair.call_ours, batch, device, dtype),
                         "theirs": make(theirs, pair.call_theirs, batch, device, dtype)}
                med = interleaved_medians({k: s.run for k, s in steps.items()}, args.repeats, args.warmup, device)
                row = dict(model=pair.label, precision=precision, mode=mode,
                           ours_ms=med["ours"] * 1e3, theirs_ms=med["theirs"] * 1e3,
                           speedup=med["theirs"] / med["ours"])
                if mode == "train":
                    flops = training_flops(ours, pair.call_ours, batch, device, dtype)
                    row["hw_fraction"] = flops / med["ours"] / peaks[precision]
                if not args.no_memory:
                    mem = {w: step_peak_memory(step, device) for w, step in steps.items()}
                    row["mem_ratio"] = mem["ours"] / mem["theirs"]
                    row["ours_mb"], row["theirs_mb"] = mem["ours"] / 2**20, mem["theirs"] / 2**20
                rows.append(row)
                print(f"  {precision} {mode}: ours {row['ours_ms']:.1f} ms, diffusers {row['theirs_ms']:.1f} ms, "
                      f"throughput x{row['speedup']:.2f}" + (f", peak memory x{row['mem_ratio']:.2f}"
                                                           if "mem_ratio" in row else ""))
    print("\n| model | precision | step | ours ms | diffusers ms | throughput ours/diffusers | "
          "peak memory ours/diffusers | ours FLOP/s / matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['mem_ratio']:.2f} ({r['ours_mb']:.0f} / {r['theirs_mb']:.0f} MB)" if "mem_ratio" in r else "-"
        hw = f"{100 * r['hw_fraction']:.0f}%" if "hw_fraction" in r else "-"
        print(f"| {r['model']} | {r['precision']} | {r['mode']} | {r['ours_ms']:.1f} | {r['theirs_ms']:.1f} | "
              f"{r['speedup']:.2f}x | {mem} | {hw} |")


if __name__ == "__main__":
    main()

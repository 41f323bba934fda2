"""The quickstart's bare model step (forward, loss, backward, AdamW; one batch held in memory) in float32 and under
bf16 autocast, measured in turn on this machine, with the CPU's instruction set as torch sees it.

    python benchmarks/precision_step.py            # the quickstart's model and batch
    python benchmarks/precision_step.py --steps 5  # fewer steps per measurement

bf16 autocast halves a step on a CPU with bf16 instructions (AVX-512 BF16, AMX) and slows it many times on one
without (AVX2 only): there, train with ``train.mixed_precision=no``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from film_diffusion.training.build import build_denoiser, build_encoder
from film_diffusion.training.config import load_experiment

ROOT = Path(__file__).resolve().parent.parent


def step_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: dict, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        prediction = model(**inputs).sample
    loss = F.mse_loss(prediction.float(), torch.zeros_like(prediction, dtype=torch.float32))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per precision and round (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each precision, in turn")
    args = parser.parse_args()

    config = load_experiment(args.config)
    encoder = build_encoder(config.condition)
    torch.manual_seed(0)
    model = build_denoiser(config, 3, config.data.resolution, encoder.token_dim, encoder.pooled_dim,
                           encoder.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = config.train.batch_size
    inputs = {"sample": torch.randn(batch, 3, config.data.resolution, config.data.resolution),
              "timestep": torch.randint(0, 1000, (batch,)),
              "condition": encoder.encode(config.sample.captions * (batch // len(config.sample.captions) + 1))[:batch]}
    times: dict[str, list[float]] = {"float32": [], "bf16 autocast": []}
    for _ in range(args.rounds):
        for name, bf16 in (("float32", False), ("bf16 autocast", True)):
            step_seconds(model, optimizer, inputs, bf16)  # warm-up
            times[name].append(statistics.median(step_seconds(model, optimizer, inputs, bf16)
                                                 for _ in range(args.steps)))
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
          f"batch {batch}, {args.rounds} rounds of {args.steps} steps (median)")
    print("| precision | seconds per step | images/s |\n| --- | ---: | ---: |")
    for name, found in times.items():
        seconds = statistics.median(found)
        print(f"| {name} | {seconds:.3f} | {batch / seconds:.1f} |")
    ratio = statistics.median(times["bf16 autocast"]) / statistics.median(times["float32"])
    print(f"bf16 autocast / float32 time: {ratio:.2f}")


if __name__ == "__main__":
    main()

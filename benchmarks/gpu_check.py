"""Everything this project checks on a GPU, in one short invocation that writes one JSON file.

    python benchmarks/gpu_check.py --out gpu_check.json          # on a machine with CUDA
    python benchmarks/gpu_check.py --device cpu --tiny --out x.json   # the script itself, on the CPU

1. the tests that need a GPU (marked ``gpu``; skipped on the CPU), their pytest summary line and exit status;
2. a bf16 training step (forward, MSE, backward, fused AdamW) of our DiT-B/2 and DiT-XL/2 with adaLN-Zero and
   class labels against diffusers' ``DiTTransformer2DModel`` at the same size, at batch 32, the two models taking
   turns step by step (``benchmarks/timing.py``): milliseconds, images/s and the ratio, per card;
3. with more than one GPU visible, an FSDP smoke run: ``film-diffusion train`` with ``train.sharding=fsdp`` on 2
   GPUs (``torchrun``), a small DiT for 20 steps with a checkpoint, its exit status and losses; with one GPU
   the JSON says it was not run, rather than skipping silently.

The card's name, torch and CUDA versions go into the JSON beside every number.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from speed_vs_diffusers import dit_pair, make_train_step
from timing import interleaved_medians

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"DiT-B/2": dict(depth=12, hidden=768, heads=12), "DiT-XL/2": dict(depth=28, hidden=1152, heads=16)}
TINY = {"DiT-Tiny/2": dict(depth=2, hidden=64, heads=4)}


def gpu_tests() -> dict:
    """The ``gpu``-marked tests, run in a child pytest so that their failures are reported, not raised."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return {"exit_status": done.returncode, "summary": lines[-1] if lines else done.stderr.strip()[-300:]}


def training_steps(device: torch.device, sizes: dict, batch: int, repeats: int, warmup: int) -> list[dict]:
    rows = []
    for name, dims in sizes.items():
        pair = dit_pair(patch=2, size=32, channels=4, classes=1000, **dims)
        torch.manual_seed(0)
        ours, theirs = pair.build_ours().to(device), pair.build_theirs().to(device)
        inputs = pair.make_batch(batch, device)
        dtype = torch.bfloat16
        steps = {"ours": make_train_step(ours, pair.call_ours, inputs, device, dtype).run,
                 "diffusers": make_train_step(theirs, pair.call_theirs, inputs, device, dtype).run}
        medians = interleaved_medians(steps, repeats, warmup, device)
        rows.append({"model": name, "batch": batch, "precision": "bf16 autocast",
                     "params_ours_M": sum(p.numel() for p in ours.parameters()) / 1e6,
                     "params_diffusers_M": sum(p.numel() for p in theirs.parameters()) / 1e6,
                     "ours_ms": medians["ours"] * 1e3, "diffusers_ms": medians["diffusers"] * 1e3,
                     "ours_images_per_s": batch / medians["ours"],
                     "diffusers_images_per_s": batch / medians["diffusers"],
                     "throughput_ours_over_diffusers": medians["diffusers"] / medians["ours"]})
        print(f"{name}: ours {rows[-1]['ours_ms']:.1f} ms, diffusers {rows[-1]['diffusers_ms']:.1f} ms "
              f"(x{rows[-1]['throughput_ours_over_diffusers']:.2f})", flush=True)
        del ours, theirs, steps
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def fsdp_smoke(gpus: int) -> dict | str:
    """A sharded run on 2 GPUs, in a temporary folder: exit status, logged losses, the pipeline written."""
    if gpus < 2:
        return f"not run: {gpus} GPU visible; FSDP needs 2 or more"
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        config = Path(out) / "config.yaml"
        config.write_text("{}\n")
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "film_diffusion.cli", "train", str(config), "train.sharding=fsdp",
                               "train.max_steps=20", "train.checkpoint_every=10", "train.sample_every=0",
                               "train.eval_every=0", "train.log_every=5", f"output_dir={Path(out) / 'run'}"],
                              cwd=ROOT, capture_output=True, text=True)
        metrics = Path(out) / "run" / "metrics.jsonl"
        losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
        return {"exit_status": done.returncode, "losses": losses, "stderr_tail": done.stderr[-500:],
                "pipeline_written": (Path(out) / "run" / "pipeline" / "model_index.json").is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a 2-block DiT instead of B/2 and XL/2 (to check the "
                        "script on the CPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-tests", action="store_true", help="leave out the gpu-marked tests")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device is visible; run it on a GPU machine, or with --device cpu --tiny.")
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "gpus_visible": torch.cuda.device_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "tests": None if args.skip_tests else gpu_tests(),
        "training_step": training_steps(device, TINY if args.tiny else SIZES, args.batch, args.repeats, args.warmup),
        "fsdp": fsdp_smoke(torch.cuda.device_count() if device.type == "cuda" else 0),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

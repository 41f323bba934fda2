"""Two DDP training steps for every method on both backbones and every input combination a model
accepts, on a gloo group: run with ``torchrun --nproc_per_node 2 tests/backbones/ddp_steps.py``.

DDP without ``find_unused_parameters`` fails the second step if any parameter got no gradient in the
first, so finishing proves that every input combination reaches every trainable parameter. Each rank
feeds different data; the ranks must end with identical weights (the gradients were averaged).
Prints one ``ok CASE`` line per case and ``all ok`` at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).parents[1]))
from factories import METHOD_LISTS, noisy_batch, text_condition, tiny_model  # noqa: E402

LABELS_ONLY = {"num_classes": 5, "cond_token_dim": None, "cond_pooled_dim": None}
TEXT_AND_LABELS = {"num_classes": 5}


def cases() -> list[tuple[str, str, list[str], str, dict]]:
    out = [(f"{b}-{'+'.join(m)}-{r}", b, m, r, {}) for b in ("dit", "unet") for m in METHOD_LISTS
           for r in ("native", "with_condition")]
    for b in ("dit", "unet"):
        for m in (["adaln_zero"], ["film"], ["concat"]):
            out.append((f"{b}-{'+'.join(m)}-labels", b, m, "native", LABELS_ONLY))
        out.append((f"{b}-film+cross_attention-text+labels", b, ["film", "cross_attention"], "native",
                    TEXT_AND_LABELS))
    return out


def inputs(kwargs: dict, rank: int) -> dict:
    batch = {}
    if kwargs.get("cond_pooled_dim", 1) is not None:
        batch["condition"] = text_condition(seed=rank)
    if "num_classes" in kwargs:
        batch["class_labels"] = torch.tensor([rank, 5])  # one real class, one null
    return batch


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name, backbone, methods, route, kwargs in cases():
        torch.manual_seed(0)  # the same initial weights on every rank
        model = DistributedDataParallel(tiny_model(backbone, methods, route, **kwargs))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sample, t = noisy_batch(seed=10 + rank)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            out = model(sample, t, **inputs(kwargs, rank)).sample
            out[:, : sample.shape[1]].sub(sample).square().mean().backward()
            optimizer.step()
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        if not all(torch.equal(g, gathered[0]) for g in gathered):
            raise AssertionError(f"{name}: ranks hold different weights after DDP steps")
        if rank == 0:
            print("ok", name, flush=True)
    if rank == 0:
        print("all ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

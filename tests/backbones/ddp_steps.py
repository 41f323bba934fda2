"""Two DDP training steps for every method on both backbones and every input combination a model
accepts, on a gloo group: run with ``torchrun --nproc_per_node 2 tests/backbones/ddp_steps.py``.

DDP without ``find_unused_parameters`` fails the second step if any parameter got no gradient in the
first, so finishing proves that every input combination reaches every trainable parameter. Each rank
feeds different data; the ranks must end with identical weights (the gradients were averaged).
A model built for text and labels must refuse labels alone, which would leave its pooled-text
projection without a gradient. Prints one ``ok CASE`` line per case and ``all ok`` at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).parents[1]))
from factories import method_lists, methods_id, noisy_batch, text_condition, tiny_model  # noqa: E402

LABELS_ONLY = {"num_classes": 5, "cond_token_dim": None, "cond_pooled_dim": None}
TEXT_AND_LABELS = {"num_classes": 5}


def cases() -> list[tuple[str, str, list[str], str, dict, bool]]:
    """(name, backbone, methods, route, model kwargs, whether the call passes text)."""
    out = [(f"{b}-{methods_id(m)}-{r}", b, m, r, {}, True) for b in ("dit", "unet") for m in method_lists(b)
           for r in ("native", "with_condition")]
    for b in ("dit", "unet"):
        for m in (["adaln_zero"], ["film"], ["concat"]):
            out.append((f"{b}-{'+'.join(m)}-labels", b, m, "native", LABELS_ONLY, False))
        both = ["film", "cross_attention"]
        out.append((f"{b}-film+cross_attention-text+labels", b, both, "native", TEXT_AND_LABELS, True))
        out.append((f"{b}-film-text+labels-given-labels-alone", b, ["film"], "native", TEXT_AND_LABELS, False))
    return out


def inputs(kwargs: dict, with_text: bool, rank: int) -> dict:
    batch = {}
    if with_text:
        batch["condition"] = text_condition(seed=rank)
    if "num_classes" in kwargs:
        batch["class_labels"] = torch.tensor([rank, 5])  # one real class, one null
    return batch


def train_two_steps(model: torch.nn.Module, sample: torch.Tensor, t: torch.Tensor, batch: dict) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        out = model(sample, t, **batch).sample
        out[:, : sample.shape[1]].sub(sample).square().mean().backward()
        optimizer.step()


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name, backbone, methods, route, kwargs, with_text in cases():
        torch.manual_seed(0)  # the same initial weights on every rank
        model = DistributedDataParallel(tiny_model(backbone, methods, route, **kwargs))
        sample, t = noisy_batch(seed=10 + rank)
        expect_refusal = not with_text and kwargs.get("cond_pooled_dim", 1) is not None
        try:
            train_two_steps(model, sample, t, inputs(kwargs, with_text, rank))
        except ValueError as err:  # a refusal; DDP's complaint about unused parameters is a RuntimeError
            if not (expect_refusal and "needs condition.pooled" in str(err)):
                raise
            if rank == 0:
                print("ok", name, flush=True)
            continue
        if expect_refusal:
            raise AssertionError(f"{name}: labels alone were accepted by a model built for text and labels")
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

"""What a denoiser costs, measured on the model itself: its parameters (all of them, and those on the
conditioning path), the FLOPs of one forward pass, the peak memory of one training step; and the backbone
width that brings a model to a target parameter count or FLOP count, so that a comparison can hold size
equal and no method wins by being larger.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from film_diffusion.conditioning import Condition
from film_diffusion.config import ConfigError
from film_diffusion.errors import UserError
from film_diffusion.training.build import build_denoiser
from film_diffusion.training.config import ExperimentConfig

SizeMeasure = Literal["params", "flops"]


def conditioning_parameters(denoiser: nn.Module) -> list[nn.Parameter]:
    """The parameters on the condition's path: the conditioning stack (embedders, generators, cross-attention
    layers, learned null) except a method that carries the timestep alone (``timestep_route: native`` with
    a condition method other than the backbone's own). A concat method's extra input channels widen the
    backbone's first layer and count there."""
    stack = denoiser.conditioner
    time_only = set(map(id, stack.methods["timestep"].parameters())) if "timestep" in stack.methods else set()
    return [p for p in stack.parameters() if id(p) not in time_only]


def parameter_counts(denoiser: nn.Module) -> dict[str, int]:
    """``params`` (every parameter) and ``params_conditioning`` (see :func:`conditioning_parameters`)."""
    return {"params": sum(p.numel() for p in denoiser.parameters()),
            "params_conditioning": sum(p.numel() for p in conditioning_parameters(denoiser))}


def example_inputs(denoiser: nn.Module, condition: Condition | None, batch_size: int = 1,
                   device: torch.device | str = "cpu") -> dict:
    """A denoiser call's keywords for ``batch_size`` samples at timestep 500: noise, and the encoded
    caption (one, repeated) or class 0."""
    cfg = denoiser.config
    inputs = {"sample": torch.randn(batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=device),
              "timestep": torch.full((batch_size,), 500, device=device)}
    if condition is None:
        inputs["class_labels"] = torch.zeros(batch_size, dtype=torch.long, device=device)
    else:
        inputs["condition"] = Condition(*(None if t is None else t[:1].expand(batch_size, *t.shape[1:]).to(device)
                                          for t in (condition.tokens, condition.mask, condition.pooled)))
    return inputs


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the GPU kernels of scaled_dot_product_attention, not the CPU's: the same two products.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def forward_flops(denoiser: nn.Module, inputs: dict) -> int:
    """FLOPs of one forward pass (a multiply-add is 2), counted by ``torch.utils.flop_counter`` over the matrix
    products, convolutions and attention on any device; element-wise work is not counted."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with torch.no_grad(), counter:
        denoiser(**inputs)
    return counter.get_total_flops()


def peak_memory_bytes(run_step: Callable[[], None], device: torch.device, tracked: Sequence[object]) -> int:
    """Peak memory of one call of ``run_step``, with ``tracked`` modules and optimizers (weights, gradients,
    optimizer state) counted: CUDA's allocator peak, or on the CPU the peak of live tensor storage counted by
    torch's ``MemTracker`` (the CPU allocator keeps no statistics, and the process's resident size mixes in
    the allocator's caching and the imports)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run_step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    tracker = MemTracker()
    tracker.track_external(*tracked)
    with tracker:
        run_step()
    return tracker.get_tracker_snapshot("peak")[device]["Total"]


def training_peak_memory(denoiser: nn.Module, inputs: dict, mixed_precision: str,
                         gradient_checkpointing: bool = False) -> int:
    """Peak bytes of one AdamW training step of a copy of ``denoiser`` on ``inputs`` (one micro-batch), after a
    first step has allocated the optimizer state, under the run's autocast: the copy's weights, gradients,
    optimizer state and activations (on a GPU, what else was allocated before the copy is left out)."""
    device = next(denoiser.parameters()).device
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    model = copy.deepcopy(denoiser).train()
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**inputs).sample.float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    return peak_memory_bytes(step, device, [model, optimizer]) - before


def model_size(config: ExperimentConfig, dims: dict, condition: Condition | None, measure: SizeMeasure) -> int:
    """The parameter count or forward FLOPs of the denoiser ``config`` describes. ``dims``: ``channels``,
    ``size`` and the encoder's ``token_dim``, ``pooled_dim``, ``max_length``."""
    denoiser = build_denoiser(config, dims["channels"], dims["size"], dims["token_dim"], dims["pooled_dim"],
                              dims["max_length"])
    if measure == "params":
        return parameter_counts(denoiser)["params"]
    return forward_flops(denoiser, example_inputs(denoiser, condition))


def width_candidates(config: ExperimentConfig) -> list[tuple[str, object]]:
    """(override key, value) pairs of every backbone width up to 4x the configured one, smallest first: DiT
    hidden sizes in steps of lcm(4, num_heads) (whole heads, and a sine-cosine position embedding that needs a
    multiple of 4); U-Net channel lists scaled together by a common factor, each channel rounded to a multiple of
    lcm(norm_num_groups, num_heads), so that the lists grow a channel level at a time where they can."""
    model = config.model
    if model.backbone == "dit":
        if model.preset is not None:
            raise ConfigError("compare.match sizes model.dit.hidden_size; set model.dit in place of model.preset.")
        step = math.lcm(4, model.dit.num_heads)
        return [("model.dit.hidden_size", w) for w in range(step, 4 * model.dit.hidden_size + 1, step)]
    unit = math.lcm(model.unet.norm_num_groups, model.unet.num_heads)
    channels = model.unet.block_out_channels
    candidates: list[tuple[str, object]] = []
    for first in range(1, 4 * channels[0] + 1):  # the factor first / channels[0], finely
        scaled = [max(unit, round(c * first / channels[0] / unit) * unit) for c in channels]
        if not candidates or candidates[-1][1] != scaled:
            candidates.append(("model.unet.block_out_channels", scaled))
    return candidates


def matched_width(config: ExperimentConfig, target: int, dims: dict, condition: Condition | None,
                  measure: SizeMeasure) -> tuple[str, object, int]:
    """The width whose model comes closest to ``target`` parameters or FLOPs: (override key, value, its size).
    The size grows with the width, so a bisection finds it."""
    candidates = width_candidates(config)

    def size_at(i: int) -> int | None:
        key, value = candidates[i]
        section, name = key.rsplit(".", 1)
        sized = copy.deepcopy(config)
        setattr(_section(sized, section), name, value)
        try:
            return model_size(sized, dims, condition, measure)
        except UserError:  # a width the backbone refuses (e.g. heads that do not divide it)
            return None

    lo, hi = 0, len(candidates) - 1
    while lo < hi:  # the first candidate whose size reaches the target
        mid = (lo + hi) // 2
        size = size_at(mid)
        if size is not None and size >= target:
            hi = mid
        else:
            lo = mid + 1
    sizes = {i: size_at(i) for i in (lo - 1, lo) if 0 <= i < len(candidates)}
    best = min((i for i, s in sizes.items() if s is not None), key=lambda i: abs(sizes[i] - target), default=None)
    if best is None:
        raise ConfigError(f"compare.match found no {model_label(config)} width near {target} {measure}.")
    return *candidates[best], sizes[best]


def model_label(config: ExperimentConfig) -> str:
    return f"{config.model.backbone} ({'+'.join(str(m) for m in config.model.conditioning)})"


def _section(config: ExperimentConfig, dotted: str) -> object:
    node: object = config
    for part in dotted.split("."):
        node = getattr(node, part)
    assert dataclasses.is_dataclass(node)
    return node

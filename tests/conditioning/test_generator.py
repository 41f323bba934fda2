"""The site-parameter generator's gradients are plain autograd's in every way a training loop uses a
layer: two passes in one loss, ``torch.autograd.grad`` twice, activation recomputation, accumulation.

A regression guard: these failed on a custom-backward head (PersistentGradLinear, removed) that reused
one gradient buffer; any faster head must pass them too."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from film_diffusion.conditioning.generator import SiteParameterGenerator


def generator() -> SiteParameterGenerator:
    torch.manual_seed(0)
    return SiteParameterGenerator(6, [4, 6], zero_init=False)


def plain(gen: SiteParameterGenerator, v: torch.Tensor) -> torch.Tensor:
    """The same function from the same parameters through plain ``F.linear``."""
    return F.linear(F.silu(v), gen.out.weight, gen.out.bias)


def emitted(gen: SiteParameterGenerator, v: torch.Tensor) -> torch.Tensor:
    return torch.cat(gen(v), dim=-1)


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)


def two_passes_in_one_loss(f: Callable, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    return f(v1).sum() + f(v2).square().sum()


def weight_grads(gen: SiteParameterGenerator, f: Callable) -> list[torch.Tensor]:
    gen.zero_grad(set_to_none=True)
    v1, v2 = inputs(1)
    two_passes_in_one_loss(f, v1, v2).backward()
    return [gen.out.weight.grad.clone(), gen.out.bias.grad.clone()]


@pytest.mark.parametrize("steps", [1, 3])
def test_two_passes_in_one_loss_give_autograds_gradients(steps):
    gen = generator()
    for _ in range(steps):  # also after earlier steps, when any kept memory would be reused
        ours = weight_grads(gen, lambda v: emitted(gen, v))
        reference = weight_grads(gen, lambda v: plain(gen, v))
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_autograd_grad_twice_returns_two_distinct_correct_gradients():
    gen = generator()
    v1, v2 = inputs(2)
    first = torch.autograd.grad(emitted(gen, v1).sum(), gen.out.weight)[0]
    second = torch.autograd.grad(emitted(gen, v2).square().sum(), gen.out.weight)[0]
    torch.testing.assert_close(first, torch.autograd.grad(plain(gen, v1).sum(), gen.out.weight)[0])
    torch.testing.assert_close(second, torch.autograd.grad(plain(gen, v2).square().sum(), gen.out.weight)[0])


def test_activation_recomputation_gives_autograds_gradients():
    gen = generator()
    ours = weight_grads(gen, lambda v: checkpoint(emitted, gen, v, use_reentrant=False))
    torch.testing.assert_close(ours, weight_grads(gen, lambda v: plain(gen, v)), rtol=1e-6, atol=1e-6)


def test_accumulation_over_backward_passes_sums_the_gradients():
    gen = generator()
    v1, v2 = inputs(3)
    for v in (v1, v2):
        emitted(gen, v).square().sum().backward()
    ours = gen.out.weight.grad.clone()
    gen.zero_grad(set_to_none=True)
    (plain(gen, v1).square().sum() + plain(gen, v2).square().sum()).backward()
    torch.testing.assert_close(ours, gen.out.weight.grad)

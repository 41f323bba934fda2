"""PersistentGradLinear computes what nn.Linear computes, and reuses its weight-gradient memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from film_diffusion.persistent_grad import PersistentGradLinear


def twin_layers() -> tuple[nn.Linear, PersistentGradLinear]:
    torch.manual_seed(0)
    reference = nn.Linear(6, 10)
    layer = PersistentGradLinear(6, 10)
    layer.load_state_dict(reference.state_dict())
    return reference, layer


def backward_both(reference: nn.Linear, layer: PersistentGradLinear, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 6, generator=g)  # a leading batch and token axis, as in a sequence model
    upstream = torch.randn(3, 4, 10, generator=g)
    for module in (reference, layer):
        x_leaf = x.clone().requires_grad_()
        (module(x_leaf) * upstream).sum().backward()
        module.input_grad = x_leaf.grad


def assert_same_grads(reference: nn.Linear, layer: PersistentGradLinear) -> None:
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.input_grad, reference.input_grad, rtol=1e-6, atol=1e-6)


def test_steps_with_set_to_none_give_linear_gradients_in_one_reused_buffer():
    reference, layer = twin_layers()
    pointers = []
    for step in range(3):
        reference.zero_grad(set_to_none=True)
        layer.zero_grad(set_to_none=True)
        backward_both(reference, layer, seed=step)
        assert_same_grads(reference, layer)
        pointers.append(layer.weight.grad.data_ptr())
    assert pointers[0] == pointers[1] == pointers[2] == layer.weight_grad_buffer.data_ptr()


@pytest.mark.parametrize("set_to_none", [None, False])
def test_accumulating_over_backward_passes_sums_the_gradients(set_to_none):
    reference, layer = twin_layers()
    for step in range(3):
        if set_to_none is not None and step == 2:  # a zeroed but kept gradient, then accumulation again
            reference.zero_grad(set_to_none=set_to_none)
            layer.zero_grad(set_to_none=set_to_none)
        backward_both(reference, layer, seed=step)
    assert_same_grads(reference, layer)


def test_state_dict_is_a_linears_and_sampling_releases_the_buffer():
    reference, layer = twin_layers()
    backward_both(reference, layer, seed=0)
    assert layer.weight_grad_buffer is not None
    assert layer.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 6)
    with torch.no_grad():
        assert torch.equal(layer(x), reference(x))
    assert layer.weight_grad_buffer is None


def test_autocast_output_matches_linear_and_weight_gradient_is_float32():
    reference, layer = twin_layers()
    x = torch.randn(5, 6)
    with torch.autocast("cpu", torch.bfloat16):
        ours, theirs = layer(x), reference(x)
    assert ours.dtype == theirs.dtype == torch.bfloat16 and torch.equal(ours, theirs)
    ours.float().sum().backward()
    theirs.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-2, atol=1e-2)

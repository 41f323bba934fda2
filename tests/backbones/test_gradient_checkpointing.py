"""Gradient checkpointing (diffusers' enable_gradient_checkpointing) gives the same loss and gradients."""

import pytest
import torch
from factories import BACKBONES, noisy_batch, randomize_, text_condition, tiny_model


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("methods", [["film", "cross_attention"], ["adaln_zero", "concat"]])
def test_checkpointed_blocks_give_the_same_gradients(backbone, methods):
    model = randomize_(tiny_model(backbone, methods))
    sample, t = noisy_batch()

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(sample, t, condition=text_condition()).sample.square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain = loss_and_grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    calls = []
    original = model._gradient_checkpointing_func
    model._set_gradient_checkpointing(True, lambda block, *args: calls.append(block) or original(block, *args))
    loss, grads = loss_and_grads()
    blocks = [m for m in model.modules() if type(m).__name__ in ("DiTBlock", "ResBlock", "AttentionBlock")]
    assert len(calls) == len(blocks) > 0  # every block went through the checkpoint
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=1e-6)
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():  # sampling never checkpoints
        calls.clear()
        model(sample, t, condition=text_condition())
        assert not calls

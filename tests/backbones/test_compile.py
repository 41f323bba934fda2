"""torch.compile (the optional fast path the trainer can turn on) captures each backbone as one graph
and gives the eager outputs and gradients within fp32 rounding, in training mode and in eval mode.

The default suite compiles a training step with the ``aot_eager`` backend (Dynamo's whole-graph capture
and AOTAutograd's joint forward-backward graph, run without code generation: seconds on the CPU); the
slow suite repeats it with the default Inductor backend, which takes minutes on 2 cores."""

import copy

import pytest
import torch
from factories import methods_id, noisy_batch, randomize_, text_condition, tiny_model

CASES = [("dit", ["adaln_zero", "cross_attention"]), ("unet", ["film", "cross_attention"]),
         ("dit", ["adaln_single", "joint_attention"]), ("unet", ["film", {"name": "cross_attention", "gate": "head"}])]


def loss_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sample, t = noisy_batch()
    loss = model(sample, t, condition=text_condition()).sample.sub(sample).square().mean()
    loss.backward()
    return loss.detach(), {name.removeprefix("_orig_mod."): p.grad for name, p in model.named_parameters()}


def check_training_step(backbone: str, methods: list[str], backend: str) -> None:
    eager = randomize_(tiny_model(backbone, methods)).train()
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True, backend=backend)
    eager_loss, eager_grads = loss_and_grads(eager)
    compiled_loss, compiled_grads = loss_and_grads(compiled)
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(("backbone", "methods"), CASES, ids=lambda v: v if isinstance(v, str) else methods_id(v))
def test_compiled_training_step_matches_eager(backbone, methods):
    check_training_step(backbone, methods, backend="aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "methods"), CASES, ids=lambda v: v if isinstance(v, str) else methods_id(v))
def test_inductor_training_step_matches_eager(backbone, methods):
    check_training_step(backbone, methods, backend="inductor")


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "methods"), CASES, ids=lambda v: v if isinstance(v, str) else methods_id(v))
def test_compiled_model_matches_eager_in_eval_mode(backbone, methods):
    model = randomize_(tiny_model(backbone, methods)).eval()
    sample, t = noisy_batch()
    with torch.no_grad():
        eager = model(sample, t, condition=text_condition()).sample
        compiled = torch.compile(model, fullgraph=True)(sample, t, condition=text_condition()).sample
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)

"""Every method on both backbones runs forward and backward with bf16 and fp16 weights (``model.to(dtype)``,
``from_pretrained(torch_dtype=...)``, FSDP's mixed precision) and under autocast, from float32 inputs."""

import copy

import pytest
import torch
from factories import BACKBONES, CASES, case_id, noisy_batch, randomize_, text_condition, tiny_model

HALF = [torch.bfloat16, torch.float16]

def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_half_precision_weights_run_forward_and_backward(case, dtype):
    backbone, methods, route = case
    reference = randomize_(tiny_model(backbone, methods, route))
    model = copy.deepcopy(reference).to(dtype)
    sample, t = noisy_batch()
    condition = text_condition()  # float32, as an encoder gives it: the model casts what it reads

    out = model(sample, t, condition=condition).sample
    assert out.dtype == dtype and out.shape == sample.shape and torch.isfinite(out).all()
    with torch.no_grad():
        expected = reference(sample, t, condition=condition).sample
    assert relative_error(out, expected) < 0.05
    out.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_autocast_runs_forward_and_backward_close_to_float32(case, dtype):
    backbone, methods, route = case
    model = randomize_(tiny_model(backbone, methods, route))
    sample, t = noisy_batch()
    with torch.no_grad():
        expected = model(sample, t, condition=text_condition()).sample
    with torch.autocast("cpu", dtype):
        out = model(sample, t, condition=text_condition()).sample
    assert torch.isfinite(out).all() and relative_error(out, expected) < 0.05
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_from_pretrained_with_torch_dtype_loads_every_weight_in_that_dtype(backbone, tmp_path):
    model = randomize_(tiny_model(backbone, ["film", "cross_attention"]))
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    sample, t = noisy_batch()
    with torch.no_grad():
        out = loaded(sample, t, condition=text_condition()).sample
        expected = model(sample, t, condition=text_condition()).sample
    assert out.dtype == torch.bfloat16 and relative_error(out, expected) < 0.05

"""The shared attention: the CPU's reduced-precision fast path computes what SDPA computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from film_diffusion import layers
from film_diffusion.conditioning.generator import SiteParameterGenerator


def qkv_and_mask(dtype: torch.dtype, n: int = 16, m: int = 12) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, n, 32, generator=g).to(dtype)
    k, v = (torch.randn(2, m, 32, generator=g).to(dtype) for _ in range(2))
    mask = torch.ones(2, m, dtype=torch.bool)
    mask[1, -5:] = False
    return q, k, v, mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_reduced_precision_attention_matches_sdpa(dtype):
    q, k, v, mask = qkv_and_mask(dtype)
    assert layers._matmul_attention_is_faster(q.view(2, 16, 4, 8).transpose(1, 2), keys=12)
    out = layers.attention(q, k, v, 4, mask)
    heads = [t.float().view(2, -1, 4, 8).transpose(1, 2) for t in (q, k, v)]
    reference = F.scaled_dot_product_attention(*heads, attn_mask=mask[:, None, None, :])
    assert out.dtype == dtype and out.shape == (2, 16, 32)
    torch.testing.assert_close(out.float(), reference.transpose(1, 2).reshape(2, 16, 32), atol=2e-2, rtol=2e-2)


def test_cpu_reduced_precision_attention_ignores_masked_keys():
    q, k, v, mask = qkv_and_mask(torch.bfloat16)
    k2, v2 = k.clone(), v.clone()
    k2[1, -5:], v2[1, -5:] = 100.0, -100.0
    assert torch.equal(layers.attention(q, k, v, 4, mask), layers.attention(q, k2, v2, 4, mask))


def test_full_precision_and_large_score_matrices_take_sdpa(monkeypatch):
    q, k, v, mask = qkv_and_mask(torch.float32)
    assert not layers._matmul_attention_is_faster(q.view(2, 16, 4, 8).transpose(1, 2), keys=12)
    monkeypatch.setattr(layers, "MATMUL_ATTENTION_MAX_SCORES", 2 * 4 * 16 * 12 - 1)
    assert not layers._matmul_attention_is_faster(q.bfloat16().view(2, 16, 4, 8).transpose(1, 2), keys=12)
    out = layers.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 4, mask)  # the SDPA route in bf16
    torch.testing.assert_close(out.float(), layers.attention(q, k, v, 4, mask), atol=2e-2, rtol=2e-2)


def test_generator_emits_float32_under_autocast_with_the_same_values():
    generator = SiteParameterGenerator(8, [3, 5], zero_init=False)
    v = torch.randn(2, 8)
    with torch.autocast("cpu", torch.bfloat16):
        inside = generator(v.bfloat16())
    outside = generator(v.bfloat16().float())
    assert all(p.dtype == torch.float32 for p in inside)
    assert all(torch.equal(a, b) for a, b in zip(inside, outside, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the SDPA route, then the CPU's matmul route
def test_packed_self_attention_equals_attention_on_its_thirds(dtype):
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 16, 3 * 32, generator=g).to(dtype)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, -3:] = False
    packed = layers.self_attention(qkv, 4, mask)
    assert packed.shape == (2, 16, 32) and packed.dtype == dtype
    assert torch.equal(packed, layers.attention(*qkv.chunk(3, dim=-1), 4, mask))


def test_tanh_gelu_is_torchs_in_float32_and_within_rounding_in_bf16():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(2)) * 3
    gelu = layers.TanhGelu()
    assert torch.equal(gelu(x), F.gelu(x, approximate="tanh"))
    low = x.bfloat16().requires_grad_()
    reference = F.gelu(x, approximate="tanh")
    out = gelu(low)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=1e-2, atol=1e-2)  # within about two bf16 ulps
    upstream = torch.randn(4096, generator=torch.Generator().manual_seed(3)).bfloat16()
    out.backward(upstream)
    low_reference = low.detach().clone().requires_grad_()
    F.gelu(low_reference, approximate="tanh").backward(upstream)
    assert torch.equal(low.grad, low_reference.grad)  # the backward pass is PyTorch's own


ROUTES = [("sdpa", torch.float32), ("sdpa", torch.bfloat16), ("matmul", torch.bfloat16), ("matmul", torch.float16)]


@pytest.mark.parametrize(("route", "dtype"), ROUTES, ids=lambda r: str(r))
def test_a_sample_with_every_key_masked_gets_a_zero_output_on_every_route(route, dtype, monkeypatch):
    if route == "sdpa":
        monkeypatch.setattr(layers, "MATMUL_ATTENTION_MAX_SCORES", 0)
    q, k, v, mask = qkv_and_mask(dtype)
    assert layers._matmul_attention_is_faster(q.view(2, 16, 4, 8).transpose(1, 2), keys=12) == (route == "matmul")
    mask[1] = False  # the second sample has no real key (an empty caption with all of its padding masked)
    out = layers.attention(q, k, v, 4, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    alone = layers.attention(q[:1], k[:1], v[:1], 4, mask[:1])[0]
    torch.testing.assert_close(out[0], alone, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)  # others unchanged

"""Shared building blocks: timestep and label embedding, attention, MLP, patchify.

Everything here is method-agnostic: no layer knows which conditioning method feeds it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias (ADM's ``zero_module``): a residual branch it ends starts at 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0,
                         freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal timestep features ``[cos, sin]`` (the DiT / ADM convention).

    ``freq_shift`` = 1 reproduces diffusers' ``Timesteps(downscale_freq_shift=1)`` used by its DiT.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t.float()[:, None] * torch.exp(exponent)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> vectors: sinusoidal features, then a two-layer MLP (DiT's ``TimestepEmbedder``)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, freq_shift: float = 0.0):
        super().__init__()
        self.frequency_size = frequency_size
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = timestep_frequencies(t, self.frequency_size, freq_shift=self.freq_shift)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))  # (B, H)


def timesteps_for_batch(timestep: torch.Tensor | float | int, batch_size: int, device: torch.device) -> torch.Tensor:
    """Accept a Python number, a 0-d tensor or a ``[B]`` tensor, as diffusers models do; return ``[B]``."""
    t = torch.as_tensor(timestep, device=device)
    if t.ndim == 0:
        return t.expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(f"timestep must be a scalar or have shape [{batch_size}], got {tuple(t.shape)}.")
    return t


class LabelEmbedder(nn.Module):
    """Class ids -> vectors. Row ``num_classes`` is the null class used for classifier-free guidance.

    The model never drops labels itself: the trainer replaces a label by :attr:`null_class` with the
    caption-dropout probability, and the sampler passes the same id for the unconditional branch.
    """

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.dtype.is_floating_point:
            raise ValueError("class_labels must be integer class ids, got a floating-point tensor.")
        return self.embedding_table(labels)  # (B, H)


# On the CPU, PyTorch's reduced-precision SDPA kernels run slower than two batched matrix products and
# a softmax (at 4 x 6 heads x 256 x 256 in bf16: 13.1 ms forward and backward against 6.3 ms), until the
# score matrix grows large enough for its memory to matter; beyond this many scores SDPA is used.
MATMUL_ATTENTION_MAX_SCORES = 1 << 23


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
              key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention on ``(B, N, C)`` tensors; ``key_mask`` is ``(B, M)``, True = attend."""
    b, n, c = q.shape
    q, k, v = (t.view(b, t.shape[1], num_heads, c // num_heads).transpose(1, 2) for t in (q, k, v))
    return attend_heads(q, k, v, key_mask).transpose(1, 2).reshape(b, n, c)


def self_attention(qkv: torch.Tensor, num_heads: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of a sequence on itself from its packed ``(B, N, 3C)`` projections (q, k, v side by side)."""
    b, n, c3 = qkv.shape
    heads = qkv.view(b, n, 3, num_heads, c3 // (3 * num_heads)).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
    if _matmul_attention_is_faster(heads[0], n):
        heads = heads.contiguous()  # one copy makes q, k and v plain batches of matrices (and one in backward)
    return attend_heads(*heads.unbind(0), key_mask).transpose(1, 2).reshape(b, n, c3 // 3)


def attend_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention on ``(B, heads, N, d)`` queries and ``(B, heads, M, d)`` keys and values -> ``(B, heads, N, d)``.

    ``scaled_dot_product_attention`` everywhere but in one case: bf16/fp16 on the CPU with a small score
    matrix, where the explicit product is faster (same math; the scores are rounded to the input dtype).
    A sample whose keys are all masked has nothing to attend to: its output is zero on every route
    (a softmax over no keys would be NaN).
    """
    if key_mask is None:
        return _attend(q, k, v, None)
    has_keys = key_mask.any(dim=-1)  # (B,)
    mask = (key_mask | ~has_keys[:, None])[:, None, None, :]  # (B, 1, 1, M); keyless samples attend anywhere...
    v = v * has_keys[:, None, None, None].to(v.dtype)  # ...to zero values (fewer than the outputs): exactly 0
    return _attend(q, k, v, mask)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if not _matmul_attention_is_faster(q, k.shape[2]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, heads, n, d = q.shape
    q, k, v = (t.reshape(b * heads, -1, d) for t in (q, k, v))  # views when already contiguous
    # The 1/sqrt(d) scale rides on the product (alpha) instead of a pass over q.
    scores = torch.baddbmm(q.new_zeros(()), q, k.transpose(1, 2), beta=0, alpha=d**-0.5)  # (B*heads, N, M)
    if mask is not None:
        scores = scores.view(b, heads, n, -1).masked_fill(~mask, float("-inf")).view(b * heads, n, -1)
    return torch.bmm(scores.softmax(dim=-1).to(v.dtype), v).view(b, heads, n, d)


def _matmul_attention_is_faster(q: torch.Tensor, keys: int) -> bool:
    scores = q.shape[0] * q.shape[1] * q.shape[2] * keys
    reduced = q.dtype in (torch.bfloat16, torch.float16)
    return q.device.type == "cpu" and reduced and scores <= MATMUL_ATTENTION_MAX_SCORES


class SelfAttention(nn.Module):
    """Self-attention with one fused QKV projection (a single matrix product for q, k and v)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Width {dim} is not divisible by num_heads={num_heads}; choose a divisor.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self_attention(self.qkv(x), self.num_heads, key_mask))

    def forward_joint(self, x: torch.Tensor, other: torch.Tensor,
                      key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention over ``x``'s tokens and another stream's together, one softmax over both (SD3's MMDiT).

        ``other`` is the other stream's own projections ``(B, L, 3C)`` (queries, keys, values) or ``(B, L, 2C)``
        (keys and values only: a stream that reads nothing back). ``key_mask`` ``(B, N + L)`` covers both
        streams' keys. Returns ``x``'s output, projected by this layer, and the other stream's unprojected
        attention output ``(B, L, C)`` (None for keys and values only): each stream projects its own.
        """
        n, c = x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).split(c, dim=-1)
        parts = other.split(c, dim=-1)
        other_q, (other_k, other_v) = (parts[0], parts[1:]) if len(parts) == 3 else (None, parts)
        if other_q is not None:
            q = torch.cat([q, other_q.to(q.dtype)], dim=1)
        k, v = torch.cat([k, other_k.to(k.dtype)], dim=1), torch.cat([v, other_v.to(v.dtype)], dim=1)
        out = attention(q, k, v, self.num_heads, key_mask)  # (B, N [+ L], C)
        return self.proj(out[:, :n]), None if other_q is None else out[:, n:]


class TanhGelu(nn.Module):
    """GELU with the tanh approximation, as DiT uses it: ``F.gelu(x, approximate="tanh")``.

    In bf16/fp16 on the CPU the forward pass computes the same function as ``x * sigmoid(2u)`` with
    ``u = sqrt(2/pi) (x + 0.044715 x^3)`` (since ``(1 + tanh(u)) / 2 = sigmoid(2u)``): the CPU's tanh
    costs three times its sigmoid, and on 1.5M bf16 values this takes 1.0 ms against 1.55 ms. Each
    intermediate is rounded to the input dtype, so results may differ from ``F.gelu`` by an ulp or two.
    The backward pass is PyTorch's own. Elsewhere it is ``F.gelu``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
            return _TanhGeluViaSigmoid.apply(x)
        return F.gelu(x, approximate="tanh")


class _TanhGeluViaSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        two_u = torch.addcmul(x, x.square(), x, value=0.044715).mul_(2 * math.sqrt(2 / math.pi))
        return two_u.sigmoid_().mul_(x)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad_out, x, approximate="tanh")


class Mlp(nn.Module):
    """Transformer feed-forward: Linear, GELU (tanh approximation, as in DiT), Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = TanhGelu()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Image ``(B, C, H, W)`` -> patch tokens ``(B, T, D)`` with ``T = (H/p)(W/p)``."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Contiguous tokens: one copy here instead of a strided copy in every layer norm and slower residual adds.
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


def unpatchify(x: torch.Tensor, patch_size: int, channels: int, grid: int) -> torch.Tensor:
    """Patch tokens ``(B, T, p*p*C)`` -> image ``(B, C, H, W)``; inverse of :class:`PatchEmbed`'s layout."""
    b = x.shape[0]
    x = x.reshape(b, grid, grid, patch_size, patch_size, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, grid * patch_size, grid * patch_size)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding ``(grid*grid, dim)``, exactly as in DiT/MAE."""
    coords = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))  # w first
    def one_axis(pos: np.ndarray, d: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    emb = np.concatenate([one_axis(coords[0], dim // 2), one_axis(coords[1], dim // 2)], axis=1)
    return torch.from_numpy(emb).float()

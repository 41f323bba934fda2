"""A Linear layer whose weight gradient is written into memory kept from one step to the next.

Why: on the CPU, PyTorch takes every tensor from ``malloc``, and glibc serves a block above 32 MB with
fresh pages from the kernel and returns them on ``free``. The site-parameter generator's weight is such
a block (DiT-S: 384 x 28416 float32, 44 MB), so with ``zero_grad(set_to_none=True)`` its gradient was
a new 44 MB allocation every step: page faults, zeroing, and an unmap, about 2% of a DiT-S bf16
training step. Here the gradient product writes into a buffer the layer keeps, and the gradient handed
to autograd is a view of it, which autograd stores as ``weight.grad`` without a copy.

The view means that a ``weight.grad`` kept by the caller past the next backward pass is overwritten by
it, as with DDP's ``gradient_as_bucket_view``. Accumulation is unchanged: while ``weight.grad`` is set,
the layer hands autograd a fresh gradient to add to it. Elsewhere it is a plain ``nn.Linear`` and
holds no buffer: without gradients (sampling), for a frozen weight, on a GPU (whose caching allocator
makes fresh memory cheap), and under ``torch.compile``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class PersistentGradLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) with a reused weight-gradient buffer on the CPU."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        # A buffer, not a plain attribute, so that .to() moves it and memory probes count it; never saved.
        self.register_buffer("weight_grad_buffer", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return F.linear(x, self.weight, self.bias)
        if self.weight.device.type == "cpu" and self.weight.requires_grad and torch.is_grad_enabled():
            return _LinearIntoGradBuffer.apply(x, self.weight, self.bias, self)
        self.weight_grad_buffer = None  # sampling (between training steps too), a frozen weight, a GPU
        return F.linear(x, self.weight, self.bias)

    def grad_buffer(self) -> torch.Tensor:
        """The buffer for the next weight gradient, (re)made to match the weight."""
        w, buffer = self.weight, self.weight_grad_buffer
        if buffer is None or buffer.shape != w.shape or buffer.dtype != w.dtype or buffer.device != w.device:
            self.weight_grad_buffer = buffer = torch.empty_like(w)
        return buffer


class _LinearIntoGradBuffer(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: PersistentGradLinear) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        rows_out, rows_in = grad_out.reshape(-1, grad_out.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = grad_out @ weight.to(grad_out.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = rows_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            rows_out, rows_in = rows_out.to(weight.dtype), rows_in.to(weight.dtype)
            if ctx.layer.weight.grad is None:  # autograd will adopt the view as weight.grad
                grad_weight = torch.mm(rows_out.t(), rows_in, out=ctx.layer.grad_buffer()).detach()
            else:  # accumulating into an existing gradient: hand over a fresh one to be added
                grad_weight = rows_out.t() @ rows_in
        return grad_x, grad_weight, grad_bias, None

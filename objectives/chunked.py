"""Token-chunked LM-head losses that never materialise the full (N, V) student logits.

A per-token loss on top of an LM head, ℓ_t = f(h_t·Wᵀ), normally keeps the (N, V) logits (and their
log-softmax, in float32) alive until backward. Here the loss is evaluated chunk by chunk of tokens:

* forward: for each chunk, logits = h_c·Wᵀ (upcast to float32), the per-token loss and its
  closed-form gradient w.r.t. the logits G_c (c, V) are computed, and only ∂ℓ/∂h_c = G_c·W (c, H) is
  kept. Peak extra memory is O(chunk × V) instead of O(N × V).
* backward: ∂L/∂h = grad_out ⊙ (∂ℓ/∂h) from the stored (N, H) buffer. Only when the head weight itself
  needs a gradient (full fine-tuning, tied embeddings) are the chunks recomputed, accumulating
  ∂L/∂W = Σ_c (grad_out_c ⊙ G_c)ᵀ·h_c in float32.

This is the pattern of Liger's fused linear cross-entropy and torchtune's chunked CE, generalised to
any loss whose logit-gradient has a closed form (divergences, sampled-token log-probs). Each token's
loss depends only on its own row, so the Jacobian is block-diagonal and the per-token gradient can be
stored before `grad_out` is known.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from objectives.masking import compute_dtype

__all__ = ["ChunkFn", "chunked_head_apply"]

ChunkFn = Callable[[Tensor, int, int, bool], tuple[Tensor, Tensor | None]]
"""(student_logits (c, V) in the compute dtype, start, end, need_grad) -> (values (c,), dℓ/dlogits
(c, V) or None). `start:end` locates the chunk among the N tokens (to slice teacher tensors)."""


def _chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


class _ChunkedHead(torch.autograd.Function):
    """Autograd function behind `chunked_head_apply`; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        chunk_fn: ChunkFn,
        chunk_size: int,
        need_hidden: bool,
        need_weight: bool,
    ) -> Tensor:
        dtype = compute_dtype(hidden, weight)
        n = hidden.shape[0]
        values = torch.empty(n, dtype=dtype, device=hidden.device)
        grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_hidden else None
        for start, end in _chunk_bounds(n, chunk_size):
            logits = (hidden[start:end] @ weight.T).to(dtype)  # (c, V)
            chunk_values, grad_logits = chunk_fn(logits, start, end, need_hidden)
            values[start:end] = chunk_values
            if grad_hidden is not None and grad_logits is not None:
                grad_hidden[start:end] = (grad_logits.to(weight.dtype) @ weight).to(dtype)
        ctx.chunk_fn = chunk_fn
        ctx.chunk_size = chunk_size
        ctx.need_hidden = need_hidden
        ctx.need_weight = need_weight
        ctx.save_for_backward(hidden, weight, grad_hidden)
        return values

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_values: Tensor
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, grad_hidden = ctx.saved_tensors
        dtype = compute_dtype(hidden, weight)
        grad_values = grad_values.to(dtype)
        grad_h = grad_w = None
        if ctx.need_hidden:
            grad_h = (grad_values[:, None] * grad_hidden).to(hidden.dtype)
        if ctx.need_weight:
            acc = torch.zeros(weight.shape, dtype=dtype, device=weight.device)
            for start, end in _chunk_bounds(hidden.shape[0], ctx.chunk_size):
                logits = (hidden[start:end] @ weight.T).to(dtype)
                _, grad_logits = ctx.chunk_fn(logits, start, end, True)
                scaled = grad_logits * grad_values[start:end, None]  # (c, V)
                acc += scaled.T @ hidden[start:end].to(dtype)
            grad_w = acc.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


def chunked_head_apply(hidden: Tensor, weight: Tensor, chunk_fn: ChunkFn, chunk_size: int) -> Tensor:
    """Per-token loss values (N,) of `chunk_fn` applied to logits = hidden·weightᵀ, chunk by chunk.

    hidden (N, H), weight (V, H). Gradients flow to `hidden` and to `weight` when they require them.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden (N, H) and weight (V, H), got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    grad_on = torch.is_grad_enabled()
    need_hidden = grad_on and hidden.requires_grad
    need_weight = grad_on and weight.requires_grad
    return _ChunkedHead.apply(hidden, weight, chunk_fn, chunk_size, need_hidden, need_weight)

"""Sampled-token log-probabilities and the masked cross-entropy built on them.

log p(y_t) = z_{y_t}/τ − logsumexp(z/τ). Used for the contrastive hinge (student, good and bad teacher
at the sampling temperature), the agreement views (one number per token per view; REFERENCE §8.13
notes that materialising full-vocabulary logits to read one token is the memory spike of the
reference), retention metrics, and SFT / off-policy cross-entropy (−mean log p of gold tokens).

`gather_logps` works on logits in row chunks, so the float32 upcast never covers all N×V at once.
`chunked_gather_logps` starts from hidden states and the LM-head weight and never builds the (N, V)
logits at all; its closed-form logit gradient is ∂log p(y)/∂u = onehot(y) − softmax(u), u = z/τ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from objectives.chunked import chunked_head_apply
from objectives.masking import as_bool_mask, compute_dtype, token_denominator

__all__ = ["chunked_cross_entropy", "chunked_gather_logps", "cross_entropy", "gather_logps"]


def _check_tokens(tokens: Tensor, lead_shape: torch.Size) -> None:
    if tokens.shape != lead_shape:
        raise ValueError(f"tokens shape {tuple(tokens.shape)} != logits leading shape {tuple(lead_shape)}")
    if tokens.dtype.is_floating_point:
        raise ValueError(f"tokens must be integer ids, got {tokens.dtype}")


def gather_logps(
    logits: Tensor, tokens: Tensor, *, temperature: float = 1.0, chunk_size: int = 256
) -> Tensor:
    """log p(tokens) under softmax(logits/τ): logits (..., V), tokens (...) -> (...), float32+.

    Processes `chunk_size` rows at a time so the float32 copy of the logits stays O(chunk × V).
    """
    _check_tokens(tokens, logits.shape[:-1])
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = compute_dtype(logits)
    rows = logits.reshape(-1, logits.shape[-1])
    ids = tokens.reshape(-1, 1)
    pieces = []
    for start in range(0, rows.shape[0], chunk_size):
        scaled = rows[start : start + chunk_size].to(dtype) / temperature
        picked = scaled.gather(-1, ids[start : start + chunk_size]).squeeze(-1)
        pieces.append(picked - torch.logsumexp(scaled, dim=-1))
    if not pieces:
        return torch.zeros(tokens.shape, dtype=dtype, device=logits.device)
    return torch.cat(pieces).reshape(tokens.shape)


def chunked_gather_logps(
    hidden: Tensor, weight: Tensor, tokens: Tensor, *, temperature: float = 1.0, chunk_size: int = 64
) -> Tensor:
    """log p(tokens) from hidden (..., H) and LM-head weight (V, H) -> (...), never building (N, V).

    Gradients flow to `hidden` and `weight` when they require them.
    """
    _check_tokens(tokens, hidden.shape[:-1])
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows = hidden.reshape(-1, hidden.shape[-1])
    ids = tokens.reshape(-1, 1)

    def chunk_fn(logits: Tensor, start: int, end: int, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        scaled = logits / temperature
        log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
        values = (scaled.gather(-1, ids[start:end]) - log_norm).squeeze(-1)
        if not need_grad:
            return values, None
        grad = -(scaled - log_norm).exp()
        grad.scatter_add_(-1, ids[start:end], torch.ones_like(ids[start:end], dtype=grad.dtype))
        return values, grad / temperature

    return chunked_head_apply(rows, weight, chunk_fn, chunk_size).reshape(tokens.shape)


def _masked_nll(
    logps: Tensor, keep: Tensor, normalizer: float | Tensor | None
) -> tuple[Tensor, dict[str, float]]:
    count = keep.sum()
    denominator = token_denominator(count, normalizer)
    loss = (
        -torch.where(keep, logps, torch.zeros((), dtype=logps.dtype, device=logps.device)).sum() / denominator
    )
    return loss, {"ce/loss": loss.item(), "ce/tokens": float(count)}


def cross_entropy(
    logits: Tensor, targets: Tensor, mask: Tensor, *, normalizer: float | Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Masked token-mean cross-entropy (SFT on gold, off-policy): logits (..., V), targets/mask (...).

    Loss = −Σ m·log p(y) / normalizer, normalizer defaulting to Σ m; pass the global token count of
    the optimizer step so gradient accumulation over micro-batches equals one big batch.
    """
    keep = as_bool_mask(mask, targets)
    return _masked_nll(gather_logps(logits, targets), keep, normalizer)


def chunked_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    mask: Tensor,
    *,
    normalizer: float | Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, dict[str, float]]:
    """`cross_entropy` from hidden (..., H) and LM-head weight (V, H); only masked rows are computed."""
    keep = as_bool_mask(mask, targets)
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"hidden leading shape {tuple(hidden.shape[:-1])} != targets shape {tuple(targets.shape)}"
        )
    logps = chunked_gather_logps(hidden[keep], weight, targets[keep], chunk_size=chunk_size)
    return _masked_nll(logps, torch.ones_like(logps, dtype=torch.bool), normalizer)

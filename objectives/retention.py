"""Retention and drift metrics: how far a trained model moved from where it started.

* `sequence_logprob` / `perplexity`: fit on new data and retention of old behaviour, per sequence.
* `token_jsd`: per-example mean Jensen–Shannon divergence between two models' next-token
  distributions (β = 0.5, natural log, so 0 ≤ JSD ≤ ln 2).
* `k3_kl`: Schulman's k3 estimator of KL(student‖start) from sampled-token log-probs,
  exp(r − s) − (r − s) − 1 with r = log p_start(y_t), s = log p_student(y_t), y_t ~ student; unbiased
  and never negative (REFERENCE §1.4 logs it as `kl_to_base_model`).

Per-sequence means over sequences without any loss token are NaN (there is nothing to measure);
filter on mask.any(-1) or use nanmean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from objectives.divergence import token_divergence
from objectives.logprobs import gather_logps
from objectives.masking import as_bool_mask, check_same_shape, compute_dtype

__all__ = ["k3_kl", "masked_row_mean", "perplexity", "sequence_logprob", "token_jsd"]


def _sequence_sum_and_mean(per_token: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    zero = torch.zeros((), dtype=per_token.dtype, device=per_token.device)
    total = torch.where(keep, per_token, zero).sum(-1)
    count = keep.sum(-1).to(per_token.dtype)
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))
    return total, mean


def sequence_logprob(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(sum, mean) over masked t of log p(tokens): logits (B, T, V), tokens/mask (B, T) -> (B,), (B,).

    Logits must already be aligned so that position t predicts tokens[:, t].
    """
    keep = as_bool_mask(mask, tokens)
    return _sequence_sum_and_mean(gather_logps(logits, tokens), keep)


def perplexity(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """exp(−mean log p) per sequence: logits (B, T, V), tokens/mask (B, T) -> (B,)."""
    _, mean = sequence_logprob(logits, tokens, mask)
    return torch.exp(-mean)


def token_jsd(p_logits: Tensor, q_logits: Tensor, mask: Tensor, *, chunk_size: int = 256) -> Tensor:
    """Per-example mean JSD(p‖q) over masked tokens: logits (B, T, V), mask (B, T) -> (B,), ≤ ln 2.

    Computed on row chunks, so the float32 working set stays O(chunk × V).
    """
    check_same_shape(p_logits=p_logits, q_logits=q_logits)
    keep = as_bool_mask(mask, p_logits[..., 0])
    p_rows = p_logits.reshape(-1, p_logits.shape[-1])
    q_rows = q_logits.reshape(-1, q_logits.shape[-1])
    pieces = [
        token_divergence(p_rows[i : i + chunk_size], q_rows[i : i + chunk_size], kind="jsd", beta=0.5)
        for i in range(0, p_rows.shape[0], chunk_size)
    ]
    dtype = compute_dtype(p_logits, q_logits)
    per_token = torch.cat(pieces) if pieces else torch.zeros(0, dtype=dtype, device=p_logits.device)
    return _sequence_sum_and_mean(per_token.reshape(keep.shape), keep)[1]


def k3_kl(logps: Tensor, ref_logps: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence mean k3 KL estimate: logps (student), ref_logps (start model), mask (B, T) -> (B,)."""
    check_same_shape(logps=logps, ref_logps=ref_logps)
    keep = as_bool_mask(mask, logps)
    dtype = compute_dtype(logps, ref_logps)
    log_ratio = ref_logps.to(dtype) - logps.to(dtype)
    # Zero masked positions before exp: padding may hold -inf - -inf or a huge ratio.
    log_ratio = torch.where(keep, log_ratio, torch.zeros((), dtype=dtype, device=log_ratio.device))
    per_token = torch.expm1(log_ratio) - log_ratio
    return _sequence_sum_and_mean(per_token, keep)[1]


def masked_row_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per-row mean of `values` (N,), given in row-major order of the True entries of `mask` (R, T).

    The inverse of `x[mask]` followed by a per-row mean: -> (R,), NaN for rows without a True entry.
    """
    keep = as_bool_mask(mask, mask)
    if values.shape != (int(keep.sum()),):
        raise ValueError(f"values {tuple(values.shape)} do not match the {int(keep.sum())} masked positions")
    full = torch.zeros(keep.shape, dtype=values.dtype, device=values.device).masked_scatter(keep, values)
    return _sequence_sum_and_mean(full, keep)[1]

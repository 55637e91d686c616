"""Per-token divergence clipping (REFERENCE §2.5).

ℓ̃_t = min(ℓ_t, κ), applied after the vocabulary sum and before agreement weighting. κ is either a
fixed value or the detached q-quantile of ℓ over the loss tokens. It is a hard clamp: tokens
above κ contribute κ and receive zero gradient, which bounds the influence of tokens where the
teacher and student disagree wildly (typically teacher artefacts of the privileged prompt).

The quantile must be taken over the whole optimizer step, not one micro-batch, or the same step
split into more micro-batches would clip differently: `divergence_quantile` computes κ from every
micro-batch's values and `clip_divergence(threshold=κ)` applies it to each.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from objectives.masking import as_bool_mask, check_same_shape, masked_mean, masked_quantile

__all__ = ["clip_divergence", "divergence_quantile"]


def divergence_quantile(values: list[Tensor], quantile: float) -> float:
    """κ = the detached `quantile` of the loss-token divergences of every micro-batch (each (n_i,)).

    inf when there is no loss token (nothing to clip).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    flat = torch.cat([v.detach().reshape(-1) for v in values]) if values else torch.zeros(0)
    kappa = masked_quantile(flat, torch.ones_like(flat, dtype=torch.bool), quantile)
    return float("inf") if kappa is None else float(kappa)


def clip_divergence(
    per_token: Tensor, mask: Tensor, *, max_value: float | None = None, quantile: float | None = None,
    threshold: float | None = None, reference: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clamp per-token divergences (...) at a fixed `max_value`, this call's `quantile` over `mask`,
    or a precomputed `threshold` (the optimizer step's quantile, `divergence_quantile`).

    The three are mutually exclusive; with none, the input is returned unchanged. `reference` (same
    shape, optional) decides which tokens are above κ instead of `per_token` itself: the trainer
    passes the values κ was computed from, so a token at the quantile is clipped or not whatever
    rounding the training pass adds. Metrics: ``clip/fraction`` (share of loss tokens strictly above
    κ) and ``clip/threshold`` (κ, or inf).
    """
    if sum(x is not None for x in (max_value, quantile, threshold)) > 1:
        raise ValueError("pass either max_value, quantile or threshold, not several")
    keep = as_bool_mask(mask, per_token)
    kappa: Tensor | None = None
    if threshold is not None:
        if math.isnan(threshold):
            raise ValueError("threshold must be a number, got NaN")
        kappa = torch.tensor(threshold, dtype=per_token.dtype, device=per_token.device)
    elif max_value is not None:
        if not max_value > 0.0:
            raise ValueError(f"max_value must be > 0, got {max_value}")
        kappa = torch.tensor(max_value, dtype=per_token.dtype, device=per_token.device)
    elif quantile is not None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        kappa = masked_quantile(per_token, keep, quantile)
    if kappa is None:
        return per_token, {"clip/fraction": 0.0, "clip/threshold": float("inf")}
    kappa = kappa.detach()
    if reference is None:
        above = per_token.detach() > kappa
        clipped = torch.clamp(per_token, max=kappa)
    else:
        check_same_shape(per_token=per_token, reference=reference)
        above = reference.detach().to(per_token.dtype) > kappa
        clipped = torch.where(above, kappa, per_token)
    metrics = {"clip/fraction": masked_mean(above.to(per_token.dtype), keep).item(), "clip/threshold": float(kappa)}
    return clipped, metrics

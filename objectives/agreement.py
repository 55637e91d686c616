"""Multi-teacher agreement weights and the weighted token mean that applies them (REFERENCE §2.1).

K auxiliary teacher views score the sampled completion; g_{k,t} = log p_T^{(k)}(y_t). Tokens (or
sequences) on which the views disagree get a smaller weight in the distillation loss.

Token level:    d_t = Var_k(g_{k,t}) (unbiased) or max_k − min_k;  s = max(Q_q(d over loss tokens), 1e-6)
                d̂_t = min(d_t / s, cap);  w_t = max(1 / (1 + γ·d̂_t), floor)
Sequence level: ḡ_k = masked mean_t g_{k,t};  D = Var_k(ḡ_k) (population) or range;  w = max(exp(−γ·D), 1e-6)

Fixes of the reference (REFERENCE §8): K = 1 gives w = 1 exactly (the unbiased variance of one sample
is NaN there, §8.4), and `weighted_token_mean` never normalises a sequence weight by itself, so it is
not cancelled (§8.2); it offers the plain count and the reference's Σw as normalisers
(`objectives.reduction`). Weights never carry gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from objectives.masking import as_bool_mask, compute_dtype, masked_mean, masked_quantile
from objectives.reduction import Normalize, Reduction, reduce_loss

__all__ = ["sequence_agreement_weights", "token_agreement_weights", "weighted_token_mean"]

Statistic = Literal["var", "range"]


def _check_common(view_logps: Tensor, gamma: float, stat: str) -> None:
    if view_logps.dim() < 2:
        raise ValueError(f"view_logps must be (K, ...), got shape {tuple(view_logps.shape)}")
    if view_logps.shape[0] < 1:
        raise ValueError("view_logps needs at least one view (K >= 1)")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if stat not in ("var", "range"):
        raise ValueError(f"stat must be 'var' or 'range', got {stat!r}")


def _spread(values: Tensor, stat: str, unbiased: bool) -> Tensor:
    """Disagreement across dim 0 (the K views); 0 when K = 1 for every statistic."""
    if values.shape[0] < 2:
        return torch.zeros_like(values[0])
    if stat == "var":
        return values.var(dim=0, unbiased=unbiased)
    return values.amax(dim=0) - values.amin(dim=0)


def _masked_stats(prefix: str, weights: Tensor, spread: Tensor, keep: Tensor) -> dict[str, float]:
    has_any = bool(keep.any())
    return {
        f"{prefix}weight_mean": masked_mean(weights, keep).item(),
        f"{prefix}weight_min": weights[keep].min().item() if has_any else 1.0,
        f"{prefix}disagreement_mean": masked_mean(spread, keep).item(),
    }


def token_agreement_weights(
    view_logps: Tensor,
    mask: Tensor,
    *,
    gamma: float,
    stat: Statistic = "var",
    quantile: float = 0.95,
    cap: float = 10.0,
    floor: float = 0.01,
) -> tuple[Tensor, dict[str, float]]:
    """Token weights w (...) from view_logps (K, ...) and the loss mask (...).

    The scale s is the `quantile` of d over masked tokens only; masked positions get weight 1 so
    they are inert wherever the weights are applied. Returned weights are detached, float32+.
    """
    _check_common(view_logps, gamma, stat)
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if not cap > 0.0:
        raise ValueError(f"cap must be > 0, got {cap}")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    keep = as_bool_mask(mask, view_logps[0])
    with torch.no_grad():
        logps = view_logps.detach().to(compute_dtype(view_logps))
        spread = _spread(logps, stat, unbiased=True)
        weights = torch.ones_like(spread)
        scale = masked_quantile(spread, keep, quantile)
        if scale is not None and gamma > 0.0:
            scale = scale.clamp(min=1e-6)
            normalized = (spread / scale).clamp(max=cap)
            weights = torch.where(keep, (1.0 / (1.0 + gamma * normalized)).clamp(min=floor), weights)
    metrics = _masked_stats("agreement/", weights, spread, keep)
    metrics["agreement/scale"] = float(scale) if scale is not None else 0.0
    metrics["agreement/floored_fraction"] = masked_mean((weights <= floor).to(weights.dtype), keep).item()
    return weights, metrics


def sequence_agreement_weights(
    view_logps: Tensor, mask: Tensor, *, gamma: float, stat: Statistic = "var"
) -> tuple[Tensor, dict[str, float]]:
    """Sequence weights w (B,) from view_logps (K, B, T) and the loss mask (B, T); detached, float32+.

    Sequences without loss tokens have ḡ_k = 0 for every view and therefore weight 1.
    """
    _check_common(view_logps, gamma, stat)
    if view_logps.dim() != 3:
        raise ValueError(f"view_logps must be (K, B, T), got shape {tuple(view_logps.shape)}")
    keep = as_bool_mask(mask, view_logps[0])
    with torch.no_grad():
        logps = view_logps.detach().to(compute_dtype(view_logps))
        view_means = masked_mean(logps, keep.expand_as(logps), dim=-1)  # (K, B)
        spread = _spread(view_means, stat, unbiased=False)  # (B,)
        weights = torch.exp(-gamma * spread).clamp(min=1e-6)
    has_tokens = keep.any(dim=-1)
    return weights, _masked_stats("agreement/seq_", weights, spread, has_tokens)


def weighted_token_mean(
    per_token: Tensor,
    mask: Tensor,
    token_weights: Tensor | None = None,
    seq_weights: Tensor | None = None,
    *,
    reduction: Reduction = "token",
    normalize: Normalize = "count",
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Weighted masked mean of per-token losses: per_token/mask/token_weights (B, T), seq_weights (B,).

    `objectives.reduction.reduce_loss` with the agreement weights, plus metrics. ``count``
    (L_KD = Σ w_b·w_t·ℓ·m / N) keeps a weight w < 1 a real reduction of that token's (or sequence's)
    gradient, so uniformly low agreement shrinks the whole term; ``weight_sum`` (Σ w·ℓ / Σ w, the
    reference's normaliser) only moves the loss between tokens and keeps the term's scale. Neither
    lets a sequence weight cancel against its own normaliser (§8.2): under ``sequence`` the sequence
    weights are normalised over the step's sequences, not within each one.
    """
    keep = as_bool_mask(mask, per_token)
    value = reduce_loss(per_token, keep, token_weights, seq_weights, reduction=reduction, normalize=normalize,
                        normalizer=normalizer)
    weights = torch.ones_like(per_token)
    if token_weights is not None:
        weights = weights * token_weights.detach().to(per_token.dtype)
    if seq_weights is not None:
        weights = weights * seq_weights.detach().to(per_token.dtype).reshape(-1, *([1] * (per_token.dim() - 1)))
    effective = masked_mean(weights.detach(), keep)
    return value, {"reduce/tokens": float(keep.sum()), "reduce/weight_mean": effective.item()}

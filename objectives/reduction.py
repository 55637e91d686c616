"""How per-token losses become one scalar: token mean or per-sequence mean, count or weight-sum normaliser.

Every term of the objective (divergence, contrastive hinge, feature MSE) is a sum over loss tokens
divided by a denominator. Two choices fix it:

* ``reduction``: ``token`` — L = Σ_{b,t} m·ℓ / N over the N loss tokens of the optimizer step, so
  every token weighs the same; ``sequence`` (the reference, REFERENCE §2.3, §2.4, §2.7) — each
  sequence's tokens are averaged first, L = Σ_b mean_t(ℓ_b) / B' over the B' sequences that have a
  loss token, so every sequence weighs the same and a token of a short completion weighs more.
* ``normalize`` (only with weights w): ``count`` — the weights are divided by the plain count, so a
  weight w < 1 is a real reduction of the term (L = Σ w·ℓ / N); ``weight_sum`` — the weights are
  divided by their own sum over the set being averaged (L = Σ w·ℓ / Σ w, the reference's weighted
  mean), so they move the loss between tokens without changing its overall scale. Under
  ``sequence``, token weights are normalised within their sequence (Σ_t w·ℓ / Σ_t w) and sequence
  weights over the step's sequences (Σ_b w_b·L_b / Σ_b w_b): a sequence weight never cancels
  against its own normaliser (the reference's §8.2 defect), only against the other sequences'.

The denominator is the only thing that couples micro-batches, so `loss_denominator` computes it on
its own: the trainer sums it over every micro-batch (and process) of the optimizer step and passes
the total as `normalizer`, which makes the micro-batch losses add up to the full-batch loss for
every choice above, with uneven lengths.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from objectives.masking import as_bool_mask

__all__ = ["REDUCTIONS", "WEIGHT_NORMALIZERS", "loss_denominator", "reduce_loss"]

Reduction = Literal["token", "sequence"]
Normalize = Literal["count", "weight_sum"]
REDUCTIONS = ("token", "sequence")
WEIGHT_NORMALIZERS = ("count", "weight_sum")


def _check(per_token: Tensor, reduction: str, normalize: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if normalize not in WEIGHT_NORMALIZERS:
        raise ValueError(f"normalize must be one of {WEIGHT_NORMALIZERS}, got {normalize!r}")
    if reduction == "sequence" and per_token.dim() != 2:
        raise ValueError(f"reduction='sequence' needs (B, T) values, got shape {tuple(per_token.shape)}")


def _weights(like: Tensor, token_weights: Tensor | None, seq_weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """(token weights (...), sequence weights (B,) or a scalar), detached, in the values' dtype."""
    token = torch.ones((), dtype=like.dtype, device=like.device)
    seq = torch.ones((), dtype=like.dtype, device=like.device)
    if token_weights is not None:
        if token_weights.shape != like.shape:
            raise ValueError(f"token_weights shape {tuple(token_weights.shape)} != {tuple(like.shape)}")
        token = token_weights.detach().to(like.dtype)
    if seq_weights is not None:
        if seq_weights.shape != like.shape[:1]:
            raise ValueError(f"seq_weights shape {tuple(seq_weights.shape)} != ({like.shape[0]},)")
        seq = seq_weights.detach().to(like.dtype)
    return token, seq


def _row(seq: Tensor, like: Tensor) -> Tensor:
    """Sequence weights broadcast over the token dims of `like`."""
    return seq.reshape(-1, *([1] * (like.dim() - 1))) if seq.dim() else seq


def loss_denominator(mask: Tensor, token_weights: Tensor | None = None, seq_weights: Tensor | None = None, *,
                     reduction: Reduction = "token", normalize: Normalize = "count") -> Tensor:
    """The local denominator of `reduce_loss` (0 when nothing is selected); sum it over micro-batches.

    token/count: Σ m;  token/weight_sum: Σ m·w_b·w_t;  sequence/count: #rows with a loss token;
    sequence/weight_sum: Σ w_b over those rows.
    """
    like = mask.to(torch.float64) if token_weights is None else torch.zeros_like(token_weights, dtype=torch.float64)
    _check(like, reduction, normalize)
    keep = as_bool_mask(mask, like)
    token, seq = _weights(like, token_weights, seq_weights)
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    if reduction == "token":
        if normalize == "count":
            return keep.sum().to(like.dtype)
        return torch.where(keep, token * _row(seq, like), zero).sum()
    has = keep.any(-1)
    if normalize == "count":
        return has.sum().to(like.dtype)
    return torch.where(has, seq.expand_as(has.to(like.dtype)), zero).sum()


def reduce_loss(per_token: Tensor, mask: Tensor, token_weights: Tensor | None = None,
                seq_weights: Tensor | None = None, *, reduction: Reduction = "token", normalize: Normalize = "count",
                normalizer: float | Tensor | None = None) -> Tensor:
    """Σ (weighted) per-token losses / denominator (module docstring); per_token/mask/token_weights (...)
    or (B, T) under ``sequence``, seq_weights (B,).

    `normalizer` replaces the local `loss_denominator` (the optimizer step's total); it must be > 0.
    Masked positions never reach the sum (a NaN there is inert). Weights carry no gradient.
    """
    _check(per_token, reduction, normalize)
    keep = as_bool_mask(mask, per_token)
    token, seq = _weights(per_token, token_weights, seq_weights)
    zero = torch.zeros((), dtype=per_token.dtype, device=per_token.device)
    weighted = torch.where(keep, token * per_token, zero)
    if reduction == "token":
        numerator = (_row(seq, per_token) * weighted).sum()
    else:
        within = keep.sum(-1).to(per_token.dtype) if normalize == "count" \
            else torch.where(keep, token.expand_as(per_token), zero).sum(-1)
        has = keep.any(-1)
        per_sequence = torch.where(has, weighted.sum(-1) / torch.where(has, within, torch.ones_like(within)), zero)
        numerator = (seq * per_sequence).sum()
    if normalizer is None:
        local = loss_denominator(keep, token_weights, seq_weights, reduction=reduction, normalize=normalize)
        return numerator / torch.where(local > 0, local, torch.ones_like(local)).to(per_token.dtype)
    if not float(normalizer) > 0:
        raise ValueError(f"normalizer must be > 0, got {float(normalizer)}")
    return numerator / normalizer

"""Weighted sum of loss terms (REFERENCE §2.7: L = L_KD + λ_c·L_con + λ_f·L_feat).

Every mechanism is a weighted term, never a mode branch: `loss = Σ w·term` over the terms whose
weight is non-zero. A zero-weight term is skipped entirely, so a NaN in a disabled term cannot reach
the loss (0·NaN = NaN), and it is still reported so logs show what it would have been.
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["combine"]


def combine(
    terms: list[tuple[str, float, Tensor]], *, prefix: str = "train/loss"
) -> tuple[Tensor, dict[str, float]]:
    """Σ weight·term over non-zero weights; metrics ``<prefix>/<name>`` (unweighted) and ``<prefix>/total``.

    terms: (name, weight, scalar tensor). Names must be unique; at least one weight must be non-zero.
    """
    names = [name for name, _, _ in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"loss term names must be unique, got {names}")
    metrics: dict[str, float] = {}
    total: Tensor | None = None
    for name, weight, term in terms:
        if term.dim() != 0:
            raise ValueError(f"loss term {name!r} must be a scalar, got shape {tuple(term.shape)}")
        if not math.isfinite(weight):
            raise ValueError(f"loss term {name!r} has non-finite weight {weight}")
        metrics[f"{prefix}/{name}"] = float(term.detach())
        if weight == 0.0:
            continue
        weighted = weight * term
        total = weighted if total is None else total + weighted
    if total is None:
        raise ValueError(f"every loss term has weight 0: {names}")
    metrics[f"{prefix}/total"] = float(total.detach())
    return total, metrics

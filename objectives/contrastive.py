"""Token-level contrastive hinge between a good and a bad teacher (REFERENCE §2.3).

s_t, g_t, n_t are the sampled-token log-probs of the student, the good teacher (privileged prompt with
the reference) and the bad teacher (privileged prompt with a plausible wrong answer):

    L_con = Σ_t m_t · max(0, μ + |s_t − g_t| − |s_t − n_t|) / N

i.e. the student should sit at least μ nats closer to the good teacher than to the bad one. The
teachers are constants. The mask m selects the loss tokens of the rows that have a bad teacher: a row
without a negative view contributes nothing, to the sum or to N, so it cannot dilute λ_c (the
reference drops such items). N counts those tokens (``reduction="token"``), or the term is the mean
over those rows of each row's token mean (``"sequence"``, the reference); the trainer passes the
optimizer step's N as `normalizer` for gradient accumulation (`objectives.reduction`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from objectives.masking import as_bool_mask, check_same_shape, compute_dtype, masked_mean
from objectives.reduction import Reduction, reduce_loss

__all__ = ["token_contrastive"]


def token_contrastive(
    student_logps: Tensor,
    good_logps: Tensor,
    bad_logps: Tensor,
    mask: Tensor,
    *,
    margin: float = 0.5,
    reduction: Reduction = "token",
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Masked mean hinge over tokens; all inputs share a shape, e.g. (B, T) or (N,) ((B, T) under "sequence").

    Metrics: ``contrastive/violation_fraction`` (share of loss tokens with a positive hinge),
    ``contrastive/gap_mean`` (mean of |s−n| − |s−g|; ≥ μ means satisfied) and ``contrastive/loss``.
    """
    check_same_shape(student_logps=student_logps, good_logps=good_logps, bad_logps=bad_logps)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    keep = as_bool_mask(mask, student_logps)
    dtype = compute_dtype(student_logps, good_logps, bad_logps)
    student = student_logps.to(dtype)
    gap = (student - bad_logps.detach().to(dtype)).abs() - (student - good_logps.detach().to(dtype)).abs()
    hinge = torch.relu(margin - gap)
    loss = reduce_loss(hinge, keep, reduction=reduction, normalizer=normalizer)
    metrics = {
        "contrastive/loss": loss.item(),
        "contrastive/violation_fraction": masked_mean((hinge.detach() > 0).to(dtype), keep).item(),
        "contrastive/gap_mean": masked_mean(gap.detach(), keep).item(),
    }
    return loss, metrics

"""Feature matching between student and teacher final hidden states (REFERENCE §2.4).

    L_feat = Σ_t m_t · mean_h (h_S,t,h − h_T,t,h)² / N

on the last decoder output (after the final norm), aligned like the logits. The teacher's states are
constants; N is the loss-token count (``reduction="token"``), or the term is the mean over sequences
of each sequence's token mean (``"sequence"``, the reference); the trainer passes the optimizer
step's N as `normalizer` (`objectives.reduction`). Used alone (`repr`) or added to the divergence (`joint`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from objectives.masking import as_bool_mask, check_same_shape, compute_dtype, masked_mean
from objectives.reduction import Reduction, reduce_loss

__all__ = ["feature_matching"]


def feature_matching(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    mask: Tensor,
    *,
    reduction: Reduction = "token",
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Masked MSE: student_hidden (B, T, H), teacher_hidden (B, T, H), mask (B, T) -> scalar.

    Any leading shape works as long as mask matches hidden[..., 0]. Metrics: ``features/mse`` and
    ``features/cosine`` (mean cosine similarity over loss tokens, a scale-free view of the same gap).
    """
    check_same_shape(student_hidden=student_hidden, teacher_hidden=teacher_hidden)
    keep = as_bool_mask(mask, student_hidden[..., 0])
    dtype = compute_dtype(student_hidden, teacher_hidden)
    student = student_hidden.to(dtype)
    teacher = teacher_hidden.detach().to(dtype)
    per_token = (student - teacher).pow(2).mean(-1)
    loss = reduce_loss(per_token, keep, reduction=reduction, normalizer=normalizer)
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(student, teacher, dim=-1)
        metrics = {"features/mse": loss.item(), "features/cosine": masked_mean(cosine, keep).item()}
    return loss, metrics

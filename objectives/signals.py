"""Signal diagnostics: does the privileged teacher know more than the student, before any training?

Self-distillation moves the student p_S(·|x) towards the teacher p_T(·|c), the same model shown the
reference. It can only help where p_T carries information p_S lacks. These functions measure that, per
item (row), from final hidden states and the LM-head weight (never building (N, V) logits) or from
per-token values; the stage averages rows and attaches confidence intervals.

* ``logprob_gain``: teacher-forced log-probability of a gold continuation g (the reference, or only
  the answer tokens after "Answer:") under the privileged prompt minus under the plain prompt,
  Δ_r = ℓ_r(c) − ℓ_r(x), with ℓ_r = mean_t log p(g_t | ·, g_<t) (``reduction="mean"``) or the
  sequence log-probability Σ_t log p(g_t | ·, g_<t) (``"sum"``: the log-prob of the whole answer).
* ``own_sample_divergence``: mean over the student's own sampled tokens y_t ~ p_S of
  KL(p_S(·|x, y_<t) ‖ p_T(·|c, y_<t)), the quantity on-policy distillation drives down (at τ).
* ``agreement_spread``: mean over tokens of the across-view spread of the sampled token's log-prob
  g_{k,t} = log p^{(k)}(y_t) under K auxiliary views: the sample standard deviation and the range
  (max − min). K = 1 gives 0; this is the disagreement the agreement weights respond to.
* ``paired_gain``: per-item difference of two outcomes (teacher-with-reference correct minus student
  correct), whose mean is the accuracy gain.

Rows without any masked token get NaN and are left out of the means (there is nothing to measure).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from objectives.agreement import _spread
from objectives.divergence import chunked_token_divergence
from objectives.logprobs import chunked_gather_logps
from objectives.masking import as_bool_mask, check_same_shape
from objectives.retention import masked_row_mean

__all__ = ["agreement_spread", "logprob_gain", "own_sample_divergence", "paired_gain", "row_logprob"]


def _nanmean(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else float("nan")


def _rows(values: Tensor) -> float:
    return float((~values.isnan()).sum())


def row_logprob(hidden: Tensor, weight: Tensor, tokens: Tensor, mask: Tensor, *,
                reduction: Literal["mean", "sum"] = "mean", chunk_size: int = 64) -> Tensor:
    """Per-row log p of `tokens` (R, T) on `mask` (R, T) from hidden (R, T, H), weight (V, H) -> (R,).

    Hidden row (r, t) predicts tokens[r, t]. ``mean``: the mean per-token log-prob; ``sum``: the
    sequence log-prob. NaN for a row without a masked token.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    keep = as_bool_mask(mask, tokens)
    if hidden.shape[:-1] != tokens.shape:
        raise ValueError(f"hidden leading shape {tuple(hidden.shape[:-1])} != tokens shape {tuple(tokens.shape)}")
    logps = chunked_gather_logps(hidden[keep], weight, tokens[keep], chunk_size=chunk_size)
    mean = masked_row_mean(logps, keep)
    return mean if reduction == "mean" else mean * keep.sum(-1).to(mean.dtype)


def logprob_gain(privileged_hidden: Tensor, plain_hidden: Tensor, weight: Tensor, tokens: Tensor, mask: Tensor,
                 *, reduction: Literal["mean", "sum"] = "mean",
                 chunk_size: int = 64) -> tuple[Tensor, dict[str, float]]:
    """ℓ(c), ℓ(x) and Δ = ℓ(c) − ℓ(x) of a gold continuation: hidden (R, T, H) under each prompt -> (3, R).

    Row 0 of the result is ℓ_r(c), row 1 ℓ_r(x), row 2 Δ_r. Metrics (means over rows with a token):
    ``privileged``, ``plain``, ``gain``, ``n`` rows.
    """
    check_same_shape(privileged_hidden=privileged_hidden, plain_hidden=plain_hidden)
    privileged = row_logprob(privileged_hidden, weight, tokens, mask, reduction=reduction, chunk_size=chunk_size)
    plain = row_logprob(plain_hidden, weight, tokens, mask, reduction=reduction, chunk_size=chunk_size)
    gain = privileged - plain
    return torch.stack([privileged, plain, gain]), {"privileged": _nanmean(privileged), "plain": _nanmean(plain), "gain": _nanmean(gain),
                  "n": _rows(gain)}


def own_sample_divergence(student_hidden: Tensor, teacher_hidden: Tensor, weight: Tensor, mask: Tensor, *,
                          teacher_weight: Tensor | None = None, temperature: float = 1.0,
                          chunk_size: int = 64) -> tuple[Tensor, dict[str, float]]:
    """Per-row mean KL(p_S ‖ p_T) over the student's sampled tokens: hidden (R, T, H), mask (R, T) -> (R,).

    `student_hidden` comes from [x; y], `teacher_hidden` from [c; y] (row t predicts y_t); the teacher
    uses `teacher_weight` (default: `weight`). Metrics: ``divergence`` (mean over rows), ``n`` rows.
    """
    check_same_shape(student_hidden=student_hidden, teacher_hidden=teacher_hidden)
    keep = as_bool_mask(mask, student_hidden[..., 0])
    per_token = chunked_token_divergence(student_hidden[keep], weight, teacher_hidden[keep], teacher_weight,
                                         kind="reverse_kl", temperature=temperature, chunk_size=chunk_size)
    rows = masked_row_mean(per_token.clamp(min=0.0), keep)  # float rounding can give −1e-9
    return rows, {"divergence": _nanmean(rows), "n": _rows(rows)}


def agreement_spread(view_logps: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Per-row mean across-view spread of the sampled token's log-prob: view_logps (K, R, T), mask (R, T) -> (2, R).

    Row 0 is the per-row mean of the per-token sample std across the K views, row 1 of the range
    (max − min). Metrics: ``std`` and ``range`` (means over rows), ``n`` rows. K = 1 gives 0 for both.
    """
    if view_logps.dim() != 3:
        raise ValueError(f"view_logps must be (K, R, T), got shape {tuple(view_logps.shape)}")
    keep = as_bool_mask(mask, view_logps[0])
    values = view_logps.to(torch.promote_types(view_logps.dtype, torch.float32))
    std = _spread(values, "var", unbiased=True).clamp(min=0.0).sqrt()
    spread = _spread(values, "range", unbiased=True)
    std_rows, range_rows = masked_row_mean(std[keep], keep), masked_row_mean(spread[keep], keep)
    return torch.stack([std_rows, range_rows]), {"std": _nanmean(std_rows), "range": _nanmean(range_rows), "n": _rows(std_rows)}


def paired_gain(teacher: Tensor, student: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Per-item teacher − student outcome (n,), e.g. correct (1) / wrong (0): -> (n,), metrics.

    Metrics: ``teacher`` and ``student`` (mean outcomes), ``gain`` (mean difference), ``n`` items.
    """
    check_same_shape(teacher=teacher, student=student)
    if teacher.dim() != 1:
        raise ValueError(f"outcomes must be 1-D, got shape {tuple(teacher.shape)}")
    a, b = teacher.double(), student.double()
    diff = a - b
    return diff, {"teacher": _nanmean(a), "student": _nanmean(b), "gain": _nanmean(diff), "n": _rows(diff)}

"""Per-token divergences between student and teacher next-token distributions.

Self-distillation loss per completion token t (REFERENCE §1.3), summed over the vocabulary, with
p_S = softmax(z_S/τ) and p_T = softmax(z_T/τ) (τ applies to both, the sampling temperature):

* ``forward_kl``: KL(p_T‖p_S) = Σ_v p_T (log p_T − log p_S)      (mode-covering; the default)
* ``reverse_kl``: KL(p_S‖p_T) = Σ_v p_S (log p_S − log p_T)      (mode-seeking)
* ``jsd`` (generalised, GKD): M = (1−β)·p_S + β·p_T formed in log space with logaddexp,
  ℓ = β·KL(p_T‖M) + (1−β)·KL(p_S‖M).

Endpoints of β. The interior formula tends to 0 at both ends, but its first-order behaviour is
ℓ/β → KL(p_T‖p_S) as β→0 and ℓ/(1−β) → KL(p_S‖p_T) as β→1. Following the reference (and TRL's
`generalized_jsd_loss`), ``jsd`` at exactly β=0 returns forward KL and at exactly β=1 reverse KL;
those two cases are dispatched explicitly, never through log(0) terms.

All math runs in float32 (bf16/fp16 inputs are upcast; float64 stays float64 for gradcheck).

`chunked_token_divergence` computes the same values from hidden states and the LM-head weight
without materialising the (N, V) student logits (see `objectives.chunked`), with closed-form logit
gradients (u = z/τ, so every gradient below is divided by τ):

* forward KL: ∂ℓ/∂u_S = p_S − p_T
* reverse KL: ∂ℓ/∂u_S = p_S ⊙ (log p_S − log p_T − ℓ)
* JSD:        ∂ℓ/∂u_S = (1−β) · p_S ⊙ (log p_S − log M − KL(p_S‖M))
  (the terms through ∂M/∂p_S cancel, leaving (1−β)·log(p_S/M) before the softmax Jacobian).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from objectives.chunked import chunked_head_apply
from objectives.masking import compute_dtype

__all__ = [
    "DivergenceKind",
    "chunked_token_divergence",
    "divergence_and_logit_grad",
    "divergence_from_logps",
    "token_divergence",
    "topk_token_divergence",
]

DivergenceKind = Literal["forward_kl", "reverse_kl", "jsd"]
_KINDS = ("forward_kl", "reverse_kl", "jsd")


def _resolve_kind(kind: str, beta: float) -> str:
    """Validate (kind, beta) and map the JSD endpoints to the KL they equal (see module docstring)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if kind == "jsd" and beta == 0.0:
        return "forward_kl"
    if kind == "jsd" and beta == 1.0:
        return "reverse_kl"
    return kind


def _check_temperature(temperature: float) -> None:
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _jsd_mixture(student_logps: Tensor, teacher_logps: Tensor, beta: float) -> Tensor:
    """log M with M = (1−β)·p_S + β·p_T, in log space."""
    return torch.logaddexp(student_logps + math.log1p(-beta), teacher_logps + math.log(beta))


def divergence_from_logps(
    student_logps: Tensor, teacher_logps: Tensor, *, kind: DivergenceKind = "forward_kl", beta: float = 0.5
) -> Tensor:
    """Per-row divergence between normalised log-distributions, summed over the last dim.

    student_logps (..., V), teacher_logps (..., V) -> (...). Inputs must already be log-softmaxed
    (any number of bins: full vocabulary or top-k + tail).
    """
    kind = _resolve_kind(kind, beta)
    if kind == "forward_kl":
        return (teacher_logps.exp() * (teacher_logps - student_logps)).sum(-1)
    if kind == "reverse_kl":
        return (student_logps.exp() * (student_logps - teacher_logps)).sum(-1)
    mixture_logps = _jsd_mixture(student_logps, teacher_logps, beta)
    kl_teacher = (teacher_logps.exp() * (teacher_logps - mixture_logps)).sum(-1)
    kl_student = (student_logps.exp() * (student_logps - mixture_logps)).sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


def _scaled_logps(logits: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    return F.log_softmax(logits.to(dtype) / temperature, dim=-1)


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token divergence ℓ_t (N,) from student_logits (N, V) and teacher_logits (N, V).

    Any leading shape works: (..., V) -> (...). The teacher is detached. Pass completion tokens
    only (select with the loss mask first); prompt positions have no business in this loss.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} != teacher logits {tuple(teacher_logits.shape)}"
        )
    _check_temperature(temperature)
    dtype = compute_dtype(student_logits, teacher_logits)
    student_logps = _scaled_logps(student_logits, temperature, dtype)
    teacher_logps = _scaled_logps(teacher_logits.detach(), temperature, dtype)
    return divergence_from_logps(student_logps, teacher_logps, kind=kind, beta=beta)


def _topk_with_tail(logits: Tensor, index: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """Log-probs of the `index` tokens plus one tail bucket holding all other tokens: (N, k+1)."""
    scaled = logits.to(dtype) / temperature
    log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
    head = scaled.gather(-1, index) - log_norm
    tail_logits = scaled.scatter(-1, index, float("-inf"))
    tail = torch.logsumexp(tail_logits, dim=-1, keepdim=True) - log_norm
    return torch.cat([head, tail], dim=-1)


def topk_token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    k: int,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Top-k + tail approximation of `token_divergence`: (N, V), (N, V) -> (N,).

    The teacher's k most likely tokens keep their own bins; every other token is pooled into one tail
    bin, for both distributions, so each is a proper distribution over k+1 bins (the tail mass is a
    logsumexp over the complement, not 1 − Σ top-k, to avoid cancellation). Pooling bins is a
    coarse-graining, so by the data-processing inequality the approximation never exceeds the exact
    value and grows monotonically with k; k ≥ V−1 is exact.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    vocab = student_logits.shape[-1]
    if k >= vocab:
        return token_divergence(student_logits, teacher_logits, kind=kind, beta=beta, temperature=temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} != teacher logits {tuple(teacher_logits.shape)}"
        )
    _check_temperature(temperature)
    dtype = compute_dtype(student_logits, teacher_logits)
    teacher_logits = teacher_logits.detach()
    index = teacher_logits.topk(k, dim=-1).indices
    student_logps = _topk_with_tail(student_logits, index, temperature, dtype)
    teacher_logps = _topk_with_tail(teacher_logits, index, temperature, dtype)
    return divergence_from_logps(student_logps, teacher_logps, kind=kind, beta=beta)


def divergence_and_logit_grad(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    kind: DivergenceKind,
    beta: float,
    temperature: float,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """ℓ (c,) and the closed-form ∂ℓ/∂student_logits (c, V) (see module docstring), same dtype as input."""
    kind = _resolve_kind(kind, beta)
    student_logps = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_logps = F.log_softmax(teacher_logits / temperature, dim=-1)
    values = divergence_from_logps(student_logps, teacher_logps, kind=kind, beta=beta)
    if not need_grad:
        return values, None
    student_probs = student_logps.exp()
    if kind == "forward_kl":
        grad = student_probs - teacher_logps.exp()
    elif kind == "reverse_kl":
        grad = student_probs * (student_logps - teacher_logps - values[:, None])
    else:
        log_ratio = student_logps - _jsd_mixture(student_logps, teacher_logps, beta)
        kl_student = (student_probs * log_ratio).sum(-1, keepdim=True)
        grad = (1.0 - beta) * student_probs * (log_ratio - kl_student)
    return values, grad / temperature


def chunked_token_divergence(
    student_hidden: Tensor,
    lm_head_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor | None = None,
    *,
    kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int = 64,
) -> Tensor:
    """`token_divergence` from final hidden states, O(chunk_size × V) peak memory: -> (N,).

    student_hidden (N, H) and lm_head_weight (V, H) receive gradients when they require them;
    teacher_hidden (N, H) and teacher_weight (V, H, default: lm_head_weight) are treated as
    constants. Hidden states are the model's last decoder output after the final norm, aligned so
    row t predicts token t. Leading dims other than N are flattened and restored.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student hidden {tuple(student_hidden.shape)} != teacher hidden {tuple(teacher_hidden.shape)}"
        )
    _check_temperature(temperature)
    _resolve_kind(kind, beta)
    lead_shape = student_hidden.shape[:-1]
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    teacher_rows = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    teacher_w = (lm_head_weight if teacher_weight is None else teacher_weight).detach()
    if teacher_w.shape[0] != lm_head_weight.shape[0]:
        raise ValueError(f"teacher vocab {teacher_w.shape[0]} != student vocab {lm_head_weight.shape[0]}")

    def chunk_fn(logits: Tensor, start: int, end: int, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        teacher_logits = (teacher_rows[start:end] @ teacher_w.T).to(logits.dtype)
        return divergence_and_logit_grad(
            logits, teacher_logits, kind=kind, beta=beta, temperature=temperature, need_grad=need_grad
        )

    return chunked_head_apply(hidden, lm_head_weight, chunk_fn, chunk_size).reshape(lead_shape)

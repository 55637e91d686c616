"""One optimizer step's math: teacher scoring (no grad), agreement weights, the weighted loss terms.

Phase A (`score`) runs every teacher forward of a micro-batch without gradient and keeps only what
the loss needs, on completion tokens: the teacher's final hidden states on [c; y] (the divergence
target and the feature target), and sampled-token log-probs of the good teacher, the K auxiliary views
and the bad teacher (negative view). Log-probs are gathered chunk by chunk from the hidden states, so
no (B·T·V) logits of any view are ever held. Phase A runs for all micro-batches of the step before any
student forward, so token-level agreement weights are normalised over the whole optimizer step and
gradient accumulation does not change them.

Phase B (`loss_terms`) runs the student on [x; y] with gradient and builds the terms of the
REFERENCE §2.7 objective. Each term's denominator is summed over the whole optimizer step before any
student forward (`denominators`; tokens counted after generation), so micro-batches sum to the
full-batch loss whatever their lengths:

    L = w_div · Σ_t w_t·min(ℓ_t, κ) / D_div  +  λ_c · L_con  +  λ_f · L_feat  +  λ_sft · L_CE

D_div is the step's loss-token count (`reduction=token`) or sequence count (`sequence`), or under
`agreement.normalize=weight_sum` the step's Σw over those; the contrastive term counts only the rows
that have a bad teacher. With `clip.quantile`, κ is the quantile over the step's tokens
(`clip_threshold`): a no-grad student pass in phase A gives every micro-batch's divergences first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from objectives import (
    chunked_cross_entropy,
    chunked_gather_logps,
    chunked_token_divergence,
    clip_divergence,
    combine,
    feature_matching,
    k3_kl,
    sequence_agreement_weights,
    token_agreement_weights,
    token_contrastive,
    weighted_token_mean,
)
from objectives.chunked import chunked_head_apply
from objectives.clipping import divergence_quantile
from objectives.divergence import topk_token_divergence
from objectives.reduction import loss_denominator
from stages.train.config import TrainConfig
from stages.train.data import Packed
from stages.train.teachers import Teachers, head_weight


@dataclass
class MicroBatch:
    """Token tensors of one micro-batch; `tokens`/`mask` are the sampled completions (B, T)."""

    tokens: Tensor | None = None  # (B, T); None when no term reads rollouts (plain SFT)
    mask: Tensor | None = None  # (B, T) bool, loss tokens
    student: Packed | None = None  # [x; y]
    teacher: Packed | None = None  # [c; y]
    aux: Packed | None = None  # K·B rows [a_k; y], view-major
    negative: Packed | None = None  # rows [n; y] for the examples that have a negative view
    negative_rows: Tensor | None = None  # (B,) bool
    gold: Packed | None = None  # [x; gold reference] for the SFT term
    gold_tokens: Tensor | None = None  # (B, G)
    gold_mask: Tensor | None = None  # (B, G) bool


@dataclass
class Scores:
    """Phase A results on the micro-batch's N loss tokens."""

    teacher_hidden: Tensor  # (N, H)
    teacher_weight: Tensor  # (V, H)
    good_logps: Tensor | None = None  # (N,)
    bad_logps: Tensor | None = None  # (N,)
    contrast_mask: Tensor | None = None  # (N,) bool, tokens of rows with a negative view
    view_logps: Tensor | None = None  # (K, B, T)
    start_logps: Tensor | None = None  # (N,) θ0 on [x; y] at τ = 1
    clip_values: Tensor | None = None  # (N,) no-grad student divergences (clip.quantile: which tokens to clip)


DENOMINATORS = ("tokens", "gold", "divergence", "contrastive", "features")
"""The step-wide sums every micro-batch's loss divides by (`denominators`, in this order)."""


@dataclass
class Normalizers:
    """Denominators of the loss terms over the whole optimizer step (all micro-batches, all processes).

    A sum that is 0 (nothing to average) is stored as 1; its term's numerator is 0 then.
    """

    tokens: float
    """Completion (loss) tokens of the step: the SSD cross-entropy's denominator."""
    gold: float
    """Gold-reference tokens of the step (SFT term)."""
    count: float = 0.0
    """The raw completion-token count (0 when every completion was masked)."""
    divergence: float | None = None
    """The divergence term's: tokens or sequences (`reduction`), or their Σw (`agreement.normalize`);
    None = `tokens`."""
    contrastive: float | None = None
    """The contrastive term's: tokens or sequences of the rows that have a bad teacher; None = `tokens`."""
    features: float | None = None
    """The feature term's: tokens or sequences; None = `tokens`."""
    clip_threshold: float | None = None
    """κ of `clip.quantile` over the step's loss tokens (`clip_threshold`)."""

    @classmethod
    def from_sums(cls, sums: dict[str, float]) -> Normalizers:
        """From the step's summed `denominators` (a 0 becomes 1)."""
        nonzero = {k: (v if v > 0 else 1.0) for k, v in sums.items()}
        return cls(tokens=nonzero["tokens"], gold=nonzero["gold"], count=sums["tokens"],
                   divergence=nonzero["divergence"], contrastive=nonzero["contrastive"],
                   features=nonzero["features"])


def completion_hidden(model: nn.Module, packed: Packed, steps: int, *, bare: bool = False) -> Tensor:
    """Final hidden states (R, T, H) at the columns predicting the T completion tokens.

    `model` is a causal LM, possibly DDP- or PEFT-wrapped (the student pass goes through the wrapper
    so DDP sees it), or with `bare=True` its decoder stack (`decoder_of`, for no-grad passes), which
    returns only the last hidden state instead of every layer's.
    """
    position_ids = (packed.attn.cumsum(-1) - 1).clamp(min=0)
    kwargs = {"input_ids": packed.ids, "attention_mask": packed.attn, "position_ids": position_ids,
              "use_cache": False}
    start = packed.width - 1
    if bare:
        hidden = model(**kwargs).last_hidden_state
    else:
        hidden = model(**kwargs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    return hidden[:, start:start + steps]


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack under a (PEFT-wrapped) causal LM; adapters injected in it stay in effect."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def group_by_length(prompt: list[int], completion: list[int], budget: int) -> list[list[int]]:
    """Row indices sorted by prompt + completion length, cut so rows × (widest prompt + longest
    completion, at least 1) stays within `budget` padded tokens per group."""
    order = sorted(range(len(prompt)), key=lambda r: (prompt[r] + completion[r], r))
    groups, current, w, t = [], [], 0, 0
    for r in order:
        w_new, t_new = max(w, prompt[r]), max(t, completion[r], 1)
        if current and (len(current) + 1) * (w_new + t_new) > budget:
            groups.append(current)
            current, w_new, t_new = [], prompt[r], max(completion[r], 1)
        current.append(r)
        w, t = w_new, t_new
    if current:
        groups.append(current)
    return groups


def length_groups(packed: Packed, budget: int) -> list[tuple[Tensor, int, int]]:
    """Rows of `packed` sorted by real length and cut into groups of at most `budget` padded tokens.

    Returns (row indices, prompt width w, completion length t) per group: the group's rows need only
    the columns [W − w, W + t) of the packed layout, so padding is paid within a group of similar
    lengths instead of up to the longest row of the whole pass.
    """
    width = packed.width
    prompt = packed.attn[:, :width].sum(-1).tolist()
    completion = packed.attn[:, width:].sum(-1).tolist()
    return [(torch.tensor(rows), max(prompt[r] for r in rows), max(1, max(completion[r] for r in rows)))
            for rows in group_by_length(prompt, completion, budget)]


def scoring_hidden(model: nn.Module, packed: Packed, steps: int, bf16: bool, budget: int) -> Tensor:
    """`completion_hidden` (R, steps, H) of a no-grad pass through the bare decoder.

    Rows run in length groups of at most `budget` tokens (`length_groups`); columns past a row's
    completion are zero (they are masked). Under `bf16` the decoder runs in bfloat16 autocast and the
    hidden states return as float32.
    """
    decoder, width = decoder_of(model), packed.width
    out = None
    for rows, w, t in length_groups(packed, budget):
        part = Packed(packed.ids[rows, width - w:width + t], packed.attn[rows, width - w:width + t], w)
        with torch.autocast(packed.ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden = completion_hidden(decoder, part, min(t, steps), bare=True)
        if bf16:
            hidden = hidden.float()
        if out is None:
            out = hidden.new_zeros((packed.ids.shape[0], steps, hidden.shape[-1]))
        out[rows.to(out.device), :hidden.shape[1]] = hidden
    return out


def _view_logps(model: nn.Module, weight: Tensor, packed: Packed, tokens: Tensor, mask: Tensor,
                temperature: float, chunk: int, bf16: bool, budget: int) -> Tensor:
    """Sampled-token log-probs of `tokens` (R, T) under one packed view, on mask positions -> (n,)."""
    hidden = scoring_hidden(model, packed, tokens.shape[1], bf16, budget)
    return chunked_gather_logps(hidden[mask], weight, tokens[mask], temperature=temperature, chunk_size=chunk)


@torch.no_grad()
def score(mb: MicroBatch, teachers: Teachers, cfg: TrainConfig, with_start: bool, bf16: bool = False) -> Scores:
    """Every no-grad forward of one micro-batch (teacher, auxiliary views, bad teacher, θ0).

    `bf16` runs the decoder passes under bfloat16 autocast (`TrainConfig.score_precision`).
    """
    tau, chunk, mask, steps = cfg.divergence.temperature, cfg.divergence.chunk_size, mb.mask, mb.tokens.shape[1]
    budget = cfg.score_batch_tokens
    with teachers.teacher() as teacher:
        weight = head_weight(teacher)
        hidden = scoring_hidden(teacher, mb.teacher, steps, bf16, budget)[mask]
        out = Scores(teacher_hidden=hidden, teacher_weight=weight)
        if cfg.contrastive.weight > 0:
            out.good_logps = chunked_gather_logps(hidden, weight, mb.tokens[mask], temperature=tau, chunk_size=chunk)
            out.bad_logps = torch.zeros_like(out.good_logps)
            rows = mb.negative_rows
            out.contrast_mask = rows[:, None].expand_as(mask)[mask]
            if mb.negative is not None:
                out.bad_logps[out.contrast_mask] = _view_logps(
                    teacher, weight, mb.negative, mb.tokens[rows], mask[rows], tau, chunk, bf16, budget)
        if mb.aux is not None:
            k = mb.aux.ids.shape[0] // mask.shape[0]
            tokens, view_mask = mb.tokens.repeat(k, 1), mask.repeat(k, 1)
            values = _view_logps(teacher, weight, mb.aux, tokens, view_mask, tau, chunk, bf16, budget)
            dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
            logps = torch.zeros(view_mask.shape, dtype=dtype, device=mask.device)
            logps[view_mask] = values.to(dtype)
            out.view_logps = logps.reshape(k, *mask.shape)
    if with_start:
        with teachers.start() as start:
            if start is not None:
                out.start_logps = _view_logps(start, head_weight(start), mb.student, mb.tokens, mask, 1.0, chunk, bf16,
                                               budget)
    return out


def agreement_weights(cfg: TrainConfig, batches: list[MicroBatch],
                      scores: list[Scores]) -> tuple[list[tuple[Tensor | None, Tensor | None]], dict[str, float]]:
    """(token weights (B, T) or None, sequence weights (B,) or None) per micro-batch, and metrics.

    Token level: the disagreement scale is the quantile over every loss token of the step.
    """
    a = cfg.agreement
    if a.level == "none":
        return [(None, None)] * len(batches), {}
    if a.level == "token":
        flat = torch.cat([s.view_logps[:, mb.mask] for mb, s in zip(batches, scores)], dim=1)  # (K, N)
        weights, metrics = token_agreement_weights(flat, torch.ones(flat.shape[1:], dtype=torch.bool,
                                                                     device=flat.device),
                                                   gamma=a.gamma, stat=a.stat, quantile=a.quantile,
                                                   cap=a.cap, floor=a.floor)
        out, start = [], 0
        for mb in batches:
            n = int(mb.mask.sum())
            full = torch.ones(mb.mask.shape, dtype=weights.dtype, device=weights.device)
            full[mb.mask] = weights[start:start + n]
            out.append((full, None))
            start += n
        return out, {f"train/{k}": v for k, v in metrics.items()}
    per = [sequence_agreement_weights(s.view_logps, mb.mask, gamma=a.gamma, stat=a.stat)[0]
           for mb, s in zip(batches, scores)]
    has = torch.cat([mb.mask.any(-1) for mb in batches])
    w = torch.cat(per)[has]
    metrics = {"train/agreement/weight_mean": float(w.mean()) if w.numel() else 1.0,
               "train/agreement/weight_min": float(w.min()) if w.numel() else 1.0}
    return [(None, p) for p in per], metrics


def denominators(cfg: TrainConfig, batches: list[MicroBatch],
                 weights: list[tuple[Tensor | None, Tensor | None]]) -> dict[str, float]:
    """This process's share of every `DENOMINATORS` sum over the step's micro-batches (unclamped).

    Sum them over processes and pass `Normalizers.from_sums`: each micro-batch's term divided by the
    step's total then adds up to the full-batch term.
    """
    out = dict.fromkeys(DENOMINATORS, 0.0)
    red, norm = cfg.reduction, cfg.agreement.normalize
    for mb, (token_w, seq_w) in zip(batches, weights):
        if mb.gold_mask is not None:
            out["gold"] += float(mb.gold_mask.sum())
        if mb.mask is None:
            continue
        out["tokens"] += float(mb.mask.sum())
        out["divergence"] += float(loss_denominator(mb.mask, token_w, seq_w, reduction=red, normalize=norm))
        out["features"] += float(loss_denominator(mb.mask, reduction=red))
        if mb.negative_rows is not None:
            keep = mb.mask & mb.negative_rows[:, None]
            out["contrastive"] += float(loss_denominator(keep, reduction=red))
    return out


@torch.no_grad()
def clip_values(model: nn.Module, weight: Tensor, batches: list[MicroBatch], scores: list[Scores],
                cfg: TrainConfig) -> list[Tensor]:
    """Per-token divergences (n_i,) of every micro-batch from a no-grad pass of the student (`model`,
    unwrapped, in eval mode: no dropout), stored in `Scores.clip_values` and returned.

    `clip_threshold` of their union is the step's κ; a token is clipped when its value here is above κ,
    so κ and the clipped set do not depend on how the step is cut into micro-batches.
    """
    out = []
    for mb, sc in zip(batches, scores):
        hidden = scoring_hidden(model, mb.student, mb.tokens.shape[1], False, cfg.score_batch_tokens)[mb.mask]
        sc.clip_values = divergence_values(hidden.to(weight.dtype), weight, sc, cfg)
        out.append(sc.clip_values)
    return out


def clip_threshold(cfg: TrainConfig, values: list[Tensor]) -> float:
    """κ = the clip.quantile of the step's per-token divergences (inf without loss tokens)."""
    return divergence_quantile(values, cfg.clip.quantile)


def divergence_values(rows: Tensor, weight: Tensor, scores: Scores, cfg: TrainConfig) -> Tensor:
    """Per-token divergence (N,) of student rows (N, H) against the teacher rows, token-chunked."""
    d = cfg.divergence
    if d.topk is None:
        return chunked_token_divergence(rows, weight, scores.teacher_hidden, scores.teacher_weight, kind=d.kind,
                                        beta=d.mix, temperature=d.temperature, chunk_size=d.chunk_size)
    teacher_rows, teacher_w = scores.teacher_hidden.detach(), scores.teacher_weight.detach()

    def chunk_fn(logits: Tensor, start: int, end: int, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        teacher_logits = (teacher_rows[start:end] @ teacher_w.T).to(logits.dtype)
        with torch.enable_grad():
            student = logits.detach().requires_grad_(need_grad)
            values = topk_token_divergence(student, teacher_logits, k=d.topk, kind=d.kind, beta=d.mix,
                                           temperature=d.temperature)
            grad = torch.autograd.grad(values.sum(), student)[0] if need_grad else None
        return values.detach(), grad

    return chunked_head_apply(rows, weight, chunk_fn, d.chunk_size)


def loss_terms(model: nn.Module, weight: Tensor, mb: MicroBatch, scores: Scores | None,
               weights: tuple[Tensor | None, Tensor | None], cfg: TrainConfig,
               norm: Normalizers) -> tuple[Tensor, dict[str, float]]:
    """The student forward(s) of one micro-batch and the weighted sum of its loss terms.

    `model` is the (possibly DDP-wrapped) student, `weight` its LM-head weight (V, H).
    """
    terms: list[tuple[str, float, Tensor]] = []
    metrics: dict[str, float] = {}
    if scores is not None:
        mask, tokens = mb.mask, mb.tokens[mb.mask]
        rows = completion_hidden(model, mb.student, mb.tokens.shape[1])[mask]  # (N, H)
        w_div = cfg.divergence_weight
        values = divergence_values(rows if w_div else rows.detach(), weight, scores, cfg)
        clipped, clip_metrics = _clip(_rows(values, mask), mask, scores, cfg, norm)
        if cfg.clip.max_value is not None or cfg.clip.quantile is not None:
            metrics["train/clip/fraction"] = clip_metrics["clip/fraction"]
        kd, _ = weighted_token_mean(clipped, mask, weights[0], weights[1], reduction=cfg.reduction,
                                    normalize=cfg.agreement.normalize, normalizer=_or(norm.divergence, norm.tokens))
        terms.append(("divergence", w_div, kd))
        if cfg.contrastive.weight > 0:
            student_logps = chunked_gather_logps(rows, weight, tokens, temperature=cfg.divergence.temperature,
                                                 chunk_size=cfg.divergence.chunk_size)
            con, m = token_contrastive(_rows(student_logps, mask), _rows(scores.good_logps, mask),
                                       _rows(scores.bad_logps, mask), mask & mb.negative_rows[:, None],
                                       margin=cfg.contrastive.margin, reduction=cfg.reduction,
                                       normalizer=_or(norm.contrastive, norm.tokens))
            terms.append(("contrastive", cfg.contrastive.weight, con))
            metrics["train/contrastive/violation_fraction"] = m["contrastive/violation_fraction"]
            metrics["train/contrastive/gap_mean"] = m["contrastive/gap_mean"]
        if cfg.features.mode != "none":
            feat, m = feature_matching(_rows(rows, mask), _rows(scores.teacher_hidden, mask), mask,
                                       reduction=cfg.reduction, normalizer=_or(norm.features, norm.tokens))
            terms.append(("features", cfg.features.weight, feat))
            metrics["train/features/cosine"] = m["features/cosine"]
        if scores.start_logps is not None:
            metrics["train/kl_to_start"] = _kl_to_start(rows, weight, tokens, mask, scores.start_logps, cfg)
    if cfg.sft.weight > 0:
        if cfg.sft.target == "gold":
            packed, tokens, keep, normalizer = mb.gold, mb.gold_tokens, mb.gold_mask, norm.gold
        else:  # SSD: the sampled completions themselves are the targets
            packed, tokens, keep, normalizer = mb.student, mb.tokens, mb.mask, norm.tokens
        rows = completion_hidden(model, packed, tokens.shape[1])[keep]
        ce, _ = chunked_cross_entropy(rows, weight, tokens[keep],
                                      torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device),
                                      normalizer=normalizer, chunk_size=cfg.divergence.chunk_size)
        terms.append(("sft", cfg.sft.weight, ce))
    loss, combined = combine(terms, prefix="train/loss")
    combined.pop("train/loss/total")
    return loss, {**combined, **metrics}


def _rows(values: Tensor, mask: Tensor) -> Tensor:
    """Loss-token values (N, ...) back in the micro-batch layout (B, T, ...), zeros elsewhere."""
    return values.new_zeros((*mask.shape, *values.shape[1:])).index_put((mask,), values)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _clip(per_token: Tensor, mask: Tensor, scores: Scores, cfg: TrainConfig,
          norm: Normalizers) -> tuple[Tensor, dict[str, float]]:
    """The divergence cap on (B, T) values: fixed, or the step's quantile κ, the clipped tokens chosen by
    their `clip_values` (the values κ was computed from)."""
    if cfg.clip.quantile is None:
        return clip_divergence(per_token, mask, max_value=cfg.clip.max_value)
    if norm.clip_threshold is None or scores.clip_values is None:
        raise ValueError("clip.quantile needs the optimizer step's threshold: run clip_values and clip_threshold "
                         "over all of the step's micro-batches first")
    return clip_divergence(per_token, mask, threshold=norm.clip_threshold,
                           reference=_rows(scores.clip_values.to(per_token.dtype), mask))


@torch.no_grad()
def _kl_to_start(rows: Tensor, weight: Tensor, tokens: Tensor, mask: Tensor, start_logps: Tensor,
                 cfg: TrainConfig) -> float:
    """Mean over sequences of the k3 estimate of KL(student‖θ0) on the sampled tokens (τ = 1)."""
    logps = chunked_gather_logps(rows.detach(), weight, tokens, chunk_size=cfg.divergence.chunk_size)
    full = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device)
    ref = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device)
    per_seq = k3_kl(full.masked_scatter(mask, logps), ref.masked_scatter(mask, start_logps.to(logps.dtype)), mask)
    per_seq = per_seq[mask.any(-1)]
    return float(per_seq.mean()) if per_seq.numel() else 0.0

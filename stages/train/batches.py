"""Rollouts and micro-batches of one optimizer step.

Rollouts are generated once per optimizer step for all of this process's prompts (REFERENCE §1.2:
steps_per_generation = grad_accum), with a seed derived from (seed, step, rank), then split into
`grad_accum` micro-batches. The split therefore never changes what was sampled, which is what makes
`batch 4 × accum 1` and `batch 4 as 4 micro-batches of 1` the same optimizer step.

The loss mask covers every generated token including EOS; with `mask_truncated`, completions that hit
the length limit without EOS are dropped from the loss.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from engines.continuous import ContinuousGenerator
from engines.generation import Completion, SamplingConfig
from engines.stops import end_of_turn
from stages.train.config import TrainConfig
from stages.train.data import PromptEncoder, TrainItem, pack, pad_completions
from stages.train.step import MicroBatch


@dataclass
class BatchContext:
    """What building micro-batches needs besides the items."""

    cfg: TrainConfig
    student: object
    """The unwrapped student (generation runs on it, adapter on, eval mode)."""
    tokenizer: object
    encoder: PromptEncoder
    device: torch.device
    rank: int = 0
    start: Callable[[], AbstractContextManager] | None = None
    """Context yielding θ0 (rollout.policy=start)."""
    vllm: object | None = None
    """The vLLM rollout engine (rollout.backend=vllm), kept for the whole run."""


def rollout_seed(seed: int, step: int, rank: int) -> int:
    """Sampling seed of one process at one step (a pure function: resume reproduces it)."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**31 - 1)


def on_policy_rows(cfg: TrainConfig, items: list[TrainItem], step: int) -> list[bool]:
    """Which items of the step use a sampled completion (GKD's λ; all of them when λ = 1)."""
    lam = cfg.rollout.on_policy_fraction
    if lam >= 1.0:
        return [True] * len(items)
    return [random.Random(f"on-policy:{cfg.seed}:{step}:{it.id}").random() < lam for it in items]


def gold_completion(ctx: BatchContext, item: TrainItem) -> Completion:
    """The item's gold reference as a completion (an off-policy sequence), cut at max_new_tokens."""
    limit = ctx.cfg.rollout.max_new_tokens
    ids = ctx.tokenizer(item.reference, add_special_tokens=False)["input_ids"]
    return Completion(text=item.reference, token_ids=ids[:limit], prompt_tokens=0, finished=len(ids) <= limit,
                      seconds=0.0)


def generate(ctx: BatchContext, items: list[TrainItem], step: int) -> list[Completion]:
    """One completion per item: sampled on its plain prompt (chat template) from the student, or
    from θ0 under rollout.policy=start, or its gold reference for GKD's off-policy share."""
    sampled = on_policy_rows(ctx.cfg, items, step)
    chosen = [it for it, s in zip(items, sampled) if s]
    outs = iter(_sample(ctx, chosen, step) if chosen else [])
    return [next(outs) if s else gold_completion(ctx, it) for it, s in zip(items, sampled)]


def _sample(ctx: BatchContext, items: list[TrainItem], step: int) -> list[Completion]:
    r = ctx.cfg.rollout
    sampling = SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                              seed=rollout_seed(ctx.cfg.seed, step, ctx.rank))
    prompts = [it.prompt for it in items]
    start = r.policy == "start"
    if ctx.vllm is not None:
        return ctx.vllm.generate(prompts, sampling, None if start else ctx.student, step)
    with ctx.start() if start else nullcontext(ctx.student) as model:
        gen = ContinuousGenerator(model, ctx.tokenizer, batch_size=len(items),
                                  max_prompt_tokens=r.max_prompt_tokens, on_long_prompt=r.on_long_prompt)
        was_training = model.training
        model.eval()
        try:
            return gen.generate(prompts, sampling)
        finally:
            model.train(was_training)


def completion_ids(completion: Completion, eos_id: int) -> list[int]:
    """Generated ids with the stop id the generator stripped put back (the mask covers it): the one the
    model emitted, else ``eos_id`` (a regex stop; callers pass the chat template's end-of-turn id)."""
    if not completion.finished:
        return list(completion.token_ids)
    return [*completion.token_ids, eos_id if completion.stop_id is None else completion.stop_id]


def micro_batches(ctx: BatchContext, items: list[TrainItem], completions: list[Completion] | None,
                  step: int) -> list[MicroBatch]:
    """Split the step's items (and their completions) into grad_accum packed micro-batches."""
    per = len(items) // ctx.cfg.grad_accum
    out = []
    for i in range(ctx.cfg.grad_accum):
        part = items[i * per:(i + 1) * per]
        comps = completions[i * per:(i + 1) * per] if completions is not None else None
        out.append(_micro_batch(ctx, part, comps, step))
    return out


def _micro_batch(ctx: BatchContext, items: list[TrainItem], comps: list[Completion] | None,
                 step: int) -> MicroBatch:
    cfg, enc = ctx.cfg, ctx.encoder
    pad, eos = ctx.tokenizer.pad_token_id, end_of_turn(ctx.tokenizer)  # gold ends as a chat turn ends
    prompts = [enc(it.prompt) for it in items]
    mb = MicroBatch()
    if comps is not None:
        tokens, lengths = pad_completions([completion_ids(c, eos) for c in comps], pad)
        mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        if cfg.rollout.mask_truncated:
            mask &= torch.tensor([c.finished for c in comps])[:, None]
        mb.tokens, mb.mask = tokens, mask
        mb.student = pack(prompts, tokens, lengths, pad)
        if not cfg.needs_teacher:
            return _to(mb, ctx.device)
        mb.teacher = pack([enc(it.privileged) for it in items], tokens, lengths, pad)
        k = len(items[0].aux)
        if k:
            views = [enc(it.aux[j]) for j in range(k) for it in items]
            mb.aux = pack(views, tokens.repeat(k, 1), lengths.repeat(k), pad)
        if cfg.contrastive.weight > 0:
            rows = torch.tensor([bool(it.negatives) for it in items])
            mb.negative_rows = rows
            chosen = [enc(choose_negative(it, cfg.seed, step)) for it in items if it.negatives]
            if chosen:
                mb.negative = pack(chosen, tokens[rows], lengths[rows], pad)
    if cfg.sft.weight > 0 and cfg.sft.target == "gold":
        gold = [ctx.tokenizer(it.reference, add_special_tokens=False)["input_ids"] + [eos] for it in items]
        mb.gold_tokens, lengths = pad_completions(gold, pad)
        mb.gold_mask = torch.arange(mb.gold_tokens.shape[1])[None, :] < lengths[:, None]
        mb.gold = pack(prompts, mb.gold_tokens, lengths, pad)
    return _to(mb, ctx.device)


def choose_negative(item: TrainItem, seed: int, step: int) -> str:
    """The negative view used as bad teacher for `item` at `step` (seeded, redrawn every step)."""
    return random.Random(f"negative:{seed}:{step}:{item.id}").choice(item.negatives)


def _to(mb: MicroBatch, device: torch.device) -> MicroBatch:
    for name, value in vars(mb).items():
        if value is not None:
            setattr(mb, name, value.to(device))
    return mb

"""The model passes behind the signals: greedy answers, own samples, and teacher-forced scoring.

All passes run on the base model (the student at step 0, which is also the teacher on its views):

* greedy completions on the plain prompt x (the student) and on the privileged prompt c (the teacher
  with the reference in its context), generated and scored exactly as the evaluate stage does;
* one sampled completion y ~ p_S(·|x) per item (the on-policy rollout of training);
* teacher-forced hidden states, one prompt pass per prompt kind through `shared_prompt_hidden`
  (KV cache reused by every continuation): under x and c the gold reference, the answer tokens
  after "Answer:" (mcqa / math) and y; under each auxiliary view y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engines.generation import Completion, Generator, SamplingConfig
from engines.sandbox import SandboxLimits, require_sandbox
from objectives.logprobs import chunked_gather_logps
from objectives.signals import agreement_spread, logprob_gain, own_sample_divergence
from stages.analyze.shared import shared_prompt_hidden
from stages.evaluate import EvaluateConfig
from stages.evaluate.scoring import score_rows
from stages.train.batches import completion_ids
from stages.train.data import pad_completions
from stages.train.teachers import head_weight

ANSWER_FAMILIES = ("mcqa", "math")
"""Families whose reference ends in a short "Answer: <letter or number>" (scored on its own)."""
ANSWER_PREFIX = "Answer:"


@dataclass(frozen=True)
class Item:
    """One train example and the teacher views the signals read."""

    row: dict
    """The `examples` row."""
    privileged: str
    """The privileged prompt c."""
    aux: tuple[str, ...]
    """The K auxiliary views."""


def greedy_correct(items: list[Item], generator: Generator, evaluate: EvaluateConfig,
                   privileged: bool) -> list[float]:
    """Per item, the evaluate score (0/1 for mcqa/math) of the greedy completion on x, or on c."""
    if any(it.row["family"] == "code" for it in items):
        require_sandbox(evaluate.allow_unsandboxed, "evaluate.allow_unsandboxed")
    limits = SandboxLimits(timeout_s=evaluate.sandbox_timeout_s, cpu_s=max(1, math.ceil(evaluate.sandbox_timeout_s)),
                           memory_mb=evaluate.sandbox_memory_mb)
    scores: list[float] = [0.0] * len(items)
    for family in sorted({it.row["family"] for it in items}):
        idx = [i for i, it in enumerate(items) if it.row["family"] == family]
        prompts = [items[i].privileged if privileged else items[i].row["prompt"] for i in idx]
        gens = generator.generate(prompts, evaluate.sampling(family))
        scored = score_rows([(family, g.text, items[i].row) for g, i in zip(gens, idx)], limits,
                            workers=evaluate.sandbox_workers, allow_unsandboxed=evaluate.allow_unsandboxed,
                            max_completion_chars=evaluate.max_completion_chars)
        for i, s in zip(idx, scored):
            scores[i] = float(s.score)
    return scores


def own_samples(items: list[Item], generator: Generator, max_new_tokens: int, temperature: float,
                seed: int) -> list[Completion]:
    """One sampled completion per item on its plain prompt (no stop pattern: a full rollout)."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return generator.generate([it.row["prompt"] for it in items], sampling)


def answer_continuation(tokenizer, item: dict) -> tuple[list[int], int]:
    """Ids of "Answer: <answer>" and how many leading ids are the prefix (not scored)."""
    prefix = tokenizer(ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
    answer = tokenizer(" " + item["answer"].strip(), add_special_tokens=False)["input_ids"]
    return prefix + answer, len(prefix)


def _mask(seqs: list[list[int]], skip: list[int], pad: int) -> tuple[Tensor, Tensor]:
    tokens, lengths = pad_completions(seqs, pad)
    cols = torch.arange(tokens.shape[1])[None, :]
    return tokens, (cols < lengths[:, None]) & (cols >= torch.tensor(skip)[:, None])


@dataclass
class Continuations:
    """The token sequences scored for one batch of items, with their masks."""

    seqs: list[list[list[int]]]
    """gold, answer, own sample (each R lists)."""
    masks: list[Tensor]
    tokens: list[Tensor]

    @classmethod
    def build(cls, tokenizer, items: list[Item], samples: list[Completion], max_gold_tokens: int) -> Continuations:
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        gold = [(tokenizer(it.row["reference"], add_special_tokens=False)["input_ids"] + [eos])[:max_gold_tokens]
                for it in items]
        answers = [answer_continuation(tokenizer, it.row) if it.row["family"] in ANSWER_FAMILIES else ([eos], 1)
                   for it in items]
        own = [completion_ids(c, eos) for c in samples]  # the sampled tokens and the EOS the sampler emitted
        seqs = [gold, [a for a, _ in answers], own]
        none = [0] * len(items)
        built = [_mask(gold, none, pad), _mask(seqs[1], [s for _, s in answers], pad), _mask(own, none, pad)]
        return cls(seqs, [m for _, m in built], [t for t, _ in built])


@torch.no_grad()
def teacher_forced(model: nn.Module, tokenizer, generator: Generator, items: list[Item], samples: list[Completion],
                   *, max_gold_tokens: int, temperature: float, budget: int,
                   chunk_size: int) -> dict[str, Tensor]:
    """Per-item values (R,) of one batch, keyed ``gold_privileged``, ``gold_plain``, ``gold_gain``, the
    same for ``answer`` (NaN outside mcqa / math), ``divergence``, ``spread_std`` and ``spread_range``
    (NaN with fewer than two auxiliary views)."""
    pad = tokenizer.pad_token_id
    cont = Continuations.build(tokenizer, items, samples, max_gold_tokens)
    device = next(model.parameters()).device
    weight = head_weight(model).float()
    tokens = [t.to(device) for t in cont.tokens]
    masks = [m.to(device) for m in cont.masks]

    def hidden(prompts: list[str], which: tuple[int, ...] = (0, 1, 2)) -> list[Tensor]:
        """Hidden states (R, T_k, H) of continuations `which` under `prompts`, one prompt pass."""
        out = shared_prompt_hidden(model, generator.encode(prompts), [cont.seqs[k] for k in which], pad,
                                   budget=budget)
        return [h[:, :tokens[k].shape[1]] for h, k in zip(out, which)]

    plain = hidden([it.row["prompt"] for it in items])
    priv = hidden([it.privileged for it in items])
    out: dict[str, Tensor] = {}
    for name, k, reduction in (("gold", 0, "mean"), ("answer", 1, "sum")):
        rows, _ = logprob_gain(priv[k], plain[k], weight, tokens[k], masks[k], reduction=reduction,
                               chunk_size=chunk_size)
        out |= {f"{name}_privileged": rows[0], f"{name}_plain": rows[1], f"{name}_gain": rows[2]}
    out["divergence"], _ = own_sample_divergence(plain[2], priv[2], weight, masks[2], temperature=temperature,
                                                 chunk_size=chunk_size)
    k_views = len(items[0].aux)
    if k_views < 2:
        out["spread_std"] = out["spread_range"] = torch.full((len(items),), float("nan"), device=device)
        return out
    views = torch.zeros((k_views, *masks[2].shape), dtype=torch.float32, device=device)
    for j in range(k_views):
        (h,) = hidden([it.aux[j] for it in items], (2,))
        views[j][masks[2]] = chunked_gather_logps(h[masks[2]], weight, tokens[2][masks[2]], temperature=temperature,
                                                  chunk_size=chunk_size).float()
    spread, _ = agreement_spread(views, masks[2])
    out["spread_std"], out["spread_range"] = spread[0], spread[1]
    return out

"""Signals stage: before any training, does the privileged teacher know more than the student?

For each dataset, on `limit` items of its TRAIN split (chosen by a seeded hash of the id; never
validation or test), the base model is measured as student (plain prompt x) and as teacher (the
privileged prompt c of the `contexts` table: x, the reference, the instruction). One row per statistic
of the ``signals`` table (schema ``schemas.SIGNALS``), the mean over items with a Student-t interval:

| statistic | per item |
|---|---|
| ``logp_gold_privileged`` / ``logp_gold_plain`` / ``logp_gold_gain`` | mean per-token log p of the gold reference (+ EOS), teacher-forced under c / under x / their difference |
| ``logp_answer_privileged`` / ``logp_answer_plain`` / ``logp_answer_gain`` | mcqa and math only: log p of the answer tokens (letter, number) after "Answer:", under c / x / difference — where the signal of a small model sits |
| ``acc_student`` / ``acc_teacher_ref`` / ``acc_gain`` | greedy score on x / on c (decoded and scored as the evaluate stage does) / their paired difference |
| ``divergence_own_samples`` | mean per-token KL(p_S(·\\|x) ‖ p_T(·\\|c)) on one completion sampled from the student on x |
| ``agreement_spread`` / ``agreement_range`` | mean per-token std / range, across the K auxiliary views, of the sampled token's log-prob (K ≥ 2 only) |
| ``num_views`` | K, the auxiliary views per item |

Gains are paired per item, so their interval is that of the per-item differences. The report flags a
dataset where these show no signal (`stages.report.signals`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import torch
from tqdm.auto import tqdm

import schemas
from engines.generation import Generator
from objectives.signals import paired_gain
from objectives.stats import mean_ci
from stages.evaluate import EvaluateConfig
from stages.ingest.splits import hash_unit
from stages.signals.measure import Item, greedy_correct, own_samples, teacher_forced
from storage import StageSpec

log = logging.getLogger(__name__)

SPLIT = "train"
SPEC = StageSpec(name="signals", version=1, inputs={"examples": schemas.EXAMPLES, "contexts": schemas.CONTEXTS},
                 outputs={"signals": schemas.SIGNALS})
STATISTICS = {
    "logp_gold_privileged": "gold_privileged", "logp_gold_plain": "gold_plain", "logp_gold_gain": "gold_gain",
    "logp_answer_privileged": "answer_privileged", "logp_answer_plain": "answer_plain",
    "logp_answer_gain": "answer_gain", "divergence_own_samples": "divergence",
    "agreement_spread": "spread_std", "agreement_range": "spread_range",
}
"""Statistic -> the per-item value of `measure.teacher_forced` it averages."""

__all__ = ["SPEC", "STATISTICS", "SignalsConfig", "run", "select_items"]


@dataclass(frozen=True)
class SignalsConfig:
    """Signal diagnostics measured on each trained dataset before training (the `signals` table)."""

    enabled: bool = True
    """Measure the signals of every dataset a method trains on, before training (nothing runs for an
    experiment that trains nothing). `unisd stage signals` measures every dataset with a train split."""
    limit: int = 64
    """Train items measured per dataset (chosen by a seeded hash of the id)."""
    num_views: int = 3
    """K auxiliary views for the agreement spread when no trained method configures views (random donors,
    built by the contexts stage); a method with agreement on supplies its own strategy and K."""
    max_new_tokens: int = 128
    """Length limit of the student's own sampled completion (the divergence and spread are measured on it)."""
    temperature: float = 1.0
    """Sampling temperature of the own completion, also the τ of the divergence and the view log-probs."""
    seed: int = 0
    """Seeds the item choice and the sampled completions."""
    batch_size: int = 16
    """Items per teacher-forced scoring batch."""
    batch_tokens: int = 8192
    """Padded-token budget of one decoder pass (rows are grouped by length)."""
    max_gold_tokens: int = 256
    """Gold references are scored up to this many tokens."""
    chunk_size: int = 64
    """Tokens per LM-head chunk."""
    confidence: float = 0.95
    """Level of the intervals (ci_low, ci_high) of every statistic."""

    def __post_init__(self) -> None:
        for name in ("limit", "max_new_tokens", "batch_size", "batch_tokens", "max_gold_tokens", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_views < 0:
            raise ValueError(f"num_views must be >= 0, got {self.num_views}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


def generation_settings(evaluate: EvaluateConfig) -> EvaluateConfig:
    """The evaluate settings the greedy accuracies use, with the fields that do not change them fixed
    (so the signals' cache key does not move with evaluate.split, limit, sampling or chunking)."""
    from dataclasses import replace

    return replace(evaluate, split=SPLIT, limit=None, temperature=0.0, top_p=1.0, num_samples=1, seed=0,
                   chunk_size=64)


def select_items(cfg: SignalsConfig, examples: pa.Table, contexts: pa.Table) -> list[Item]:
    """Per dataset, `limit` train items with a privileged view (seeded hash order), sorted by id.

    An item's auxiliary views are its `aux_<k>` contexts, k = 0, 1, ... (all items of a dataset keep
    the same K, the smallest any of them has)."""
    views: dict[str, dict[str, str]] = defaultdict(dict)
    for r in contexts.to_pylist():
        views[r["id"]][r["view"]] = r["text"]
    rows = [r for r in examples.to_pylist() if r["split"] == SPLIT and "privileged" in views.get(r["id"], {})]
    items = []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: hash_unit(cfg.seed, r["id"]))
        mine = sorted(mine[:cfg.limit], key=lambda r: r["id"])
        k = min(sum(v.startswith("aux_") for v in views[r["id"]]) for r in mine)
        items += [Item(r, views[r["id"]]["privileged"], tuple(views[r["id"]][f"aux_{j}"] for j in range(k)))
                  for r in mine]
    return items


def run(cfg: SignalsConfig, examples: pa.Table, contexts: pa.Table, model: torch.nn.Module, tokenizer,
        generator: Generator, evaluate: EvaluateConfig, model_label: str) -> dict[str, pa.Table]:
    """``{"signals": table}``: every statistic of every dataset with train items in ``contexts``."""
    items = select_items(cfg, examples, contexts)
    if not items:
        raise ValueError("signals: no train-split example has a privileged view in the contexts table "
                         "(signals are measured on the train split only)")
    model.eval()
    out = []
    for dataset in sorted({it.row["dataset"] for it in items}):
        mine = [it for it in items if it.row["dataset"] == dataset]
        values = _measure(cfg, mine, model, tokenizer, generator, evaluate)
        out += _rows(dataset, model_label, values, len(mine[0].aux), cfg.confidence)
        log.info("signals %s: %s", dataset, ", ".join(f"{r['statistic']} {r['value']:.3f}" for r in out
                                                        if r["dataset"] == dataset))
    return {"signals": schemas.conform(out, schemas.SIGNALS)}


def _measure(cfg: SignalsConfig, items: list[Item], model: torch.nn.Module, tokenizer, generator: Generator,
             evaluate: EvaluateConfig) -> dict[str, list[float]]:
    """Per-item values of one dataset: the STATISTICS keys of `teacher_forced` plus the accuracies."""
    student = greedy_correct(items, generator, evaluate, privileged=False)
    teacher = greedy_correct(items, generator, evaluate, privileged=True)
    diff, _ = paired_gain(torch.tensor(teacher), torch.tensor(student))
    values: dict[str, list[float]] = {"acc_student": student, "acc_teacher_ref": teacher,
                                      "acc_gain": diff.tolist()}
    samples = own_samples(items, generator, cfg.max_new_tokens, cfg.temperature, cfg.seed)
    bar = tqdm(total=len(items), desc=f"signals {items[0].row['dataset']}", unit="ex", disable=None)
    for start in range(0, len(items), cfg.batch_size):
        part = teacher_forced(model, tokenizer, generator, items[start:start + cfg.batch_size],
                              samples[start:start + cfg.batch_size], max_gold_tokens=cfg.max_gold_tokens,
                              temperature=cfg.temperature, budget=cfg.batch_tokens, chunk_size=cfg.chunk_size)
        for name, key in STATISTICS.items():
            values.setdefault(name, []).extend(part[key].tolist())
        bar.update(len(part["divergence"]))
    bar.close()
    return values


def _rows(dataset: str, model: str, values: dict[str, list[float]], num_views: int,
          confidence: float) -> list[dict]:
    """One row per statistic with at least one finite item value: mean, Student-t interval, n."""
    out = []
    for name, per_item in values.items():
        finite = [v for v in per_item if math.isfinite(v)]
        if not finite:
            continue
        mean, half = mean_ci(finite, confidence)
        low, high = (None, None) if math.isnan(half) else (mean - half, mean + half)
        out.append({"dataset": dataset, "model": model, "statistic": name, "value": mean, "ci_low": low,
                    "ci_high": high, "n": len(finite), "split": SPLIT})
    n = len(next(iter(values.values())))
    out.append({"dataset": dataset, "model": model, "statistic": "num_views", "value": float(num_views),
                "ci_low": None, "ci_high": None, "n": n, "split": SPLIT})
    return out

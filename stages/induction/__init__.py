"""Induction stage: abstract task instructions induced from sampled training demonstrations.

For each dataset, N meta-prompts each show D demonstrations drawn from the TRAIN split with a seeded
RNG (sets are disjoint until the pool is exhausted, then drawn from a fresh permutation), and a
`Generator` (the local model, or an OpenAI-compatible endpoint) writes one general instruction per
meta-prompt (`stages.induction.prompts`). Every reply is parsed and checked by
`stages.induction.validate`: an instruction that leaks a demonstration's answer or refers to a
reference solution is rejected and its slot regenerated with new demonstrations and a new sampling seed,
up to ``max_attempts`` rounds. Rejections are counted per reason in the log and in
``files/induction_stats.json``. The contexts stage later places these instructions in auxiliary teacher
views (REFERENCE-UNISD §3.2), fixing the reference's unseeded sampling (§8.15) and its "study the
reference solution" wording (§8.10).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

import schemas
from engines.generation import Generator
from stages.induction.llm import GeneratorConfig, build_generator, generate_with_backoff
from stages.induction.prompts import meta_prompt, parse_instruction
from stages.induction.validate import check_instruction
from storage import StageSpec, Workspace

log = logging.getLogger(__name__)

SPEC = StageSpec(name="induction", version=1, inputs={"examples": schemas.EXAMPLES},
                 outputs={"instructions": schemas.INSTRUCTIONS})

__all__ = ["SPEC", "GeneratorConfig", "InductionConfig", "InductionError", "induce_instructions", "run"]


class InductionError(RuntimeError):
    """Induction cannot produce what the config asks for (no demonstrations, too few instructions)."""


@dataclass(frozen=True)
class InductionConfig:
    """How many instructions to induce per dataset, from how many demonstrations, with which model."""

    num_instructions: int = 8
    """Instructions kept per dataset (N)."""
    num_demos: int = 3
    """Demonstrations shown in each meta-prompt (D)."""
    split: str = "train"
    """Split the demonstrations come from; never the evaluation split."""
    max_attempts: int = 4
    """Generation rounds per instruction slot; a rejected reply is regenerated with new demonstrations."""
    min_instructions: int = 1
    """Fail the stage when a dataset ends with fewer accepted instructions than this."""
    min_words: int = 8
    """Shorter instructions are rejected."""
    max_chars: int = 1200
    """Longer instructions are rejected."""
    max_demo_chars: int = 1500
    """Each demonstration's problem and solution are shortened to this many characters (counted)."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """Which model writes the instructions."""
    retries: int = 3
    """Retries of a failed generation call (endpoint down, server error) before the stage fails."""
    backoff_s: float = 2.0
    """First wait between those retries; doubles each time."""
    seed: int = 0
    """Seeds the demonstration draws and the sampling."""

    def __post_init__(self) -> None:
        for name in ("num_instructions", "num_demos", "max_attempts", "min_words", "max_chars",
                     "max_demo_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"induction.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.min_instructions <= self.num_instructions:
            raise ValueError("induction.min_instructions must be in [0, num_instructions]")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("induction.retries and induction.backoff_s must be >= 0")
        if self.split == "test":
            raise ValueError("induction.split: demonstrations must not come from the test split")


class DemoSampler:
    """Seeded draws of ``size`` distinct items; disjoint until the pool is used up, then reshuffled."""

    def __init__(self, items: list[dict[str, Any]], size: int, rng: random.Random) -> None:
        self.items, self.size, self.rng = items, min(size, len(items)), rng
        self.queue: list[int] = []

    def draw(self) -> list[dict[str, Any]]:
        picked: list[int] = []
        while len(picked) < self.size:
            if not self.queue:
                self.queue = self.rng.sample(range(len(self.items)), len(self.items))
            i = self.queue.pop()
            if i not in picked:
                picked.append(i)
        return [self.items[i] for i in picked]


def _train_pool(examples: list[dict[str, Any]], dataset: str, split: str) -> list[dict[str, Any]]:
    pool = sorted((e for e in examples if e["dataset"] == dataset and e["split"] == split),
                  key=lambda e: e["id"])
    if not pool:
        raise InductionError(f"dataset {dataset}: no {split}-split examples to draw demonstrations from")
    return pool


def induce_dataset(cfg: InductionConfig, pool: list[dict[str, Any]], generator: Generator,
                   salt: int) -> tuple[list[tuple[str, list[str]]], dict[str, Any]]:
    """Accepted (instruction, demo ids) for one dataset, in slot order, and its counters."""
    family = Counter(e["family"] for e in pool).most_common(1)[0][0]
    sampler = DemoSampler(pool, cfg.num_demos, random.Random(f"induction:{cfg.seed}:{pool[0]['dataset']}"))
    pending = {slot: sampler.draw() for slot in range(cfg.num_instructions)}
    accepted: dict[int, tuple[str, list[str]]] = {}
    rejected: Counter[str] = Counter()
    clipped = 0
    for attempt in range(cfg.max_attempts):
        if not pending:
            break
        slots = sorted(pending)
        prompts = []
        for slot in slots:
            prompt, n = meta_prompt(family, pending[slot], cfg.max_demo_chars)
            prompts.append(prompt)
            clipped += n
        sampling = cfg.generator.sampling(seed=cfg.seed * 7919 + salt * 131 + attempt)
        replies = generate_with_backoff(generator, prompts, sampling, cfg.retries, cfg.backoff_s)
        seen = {text.lower() for text, _ in accepted.values()}
        for slot, reply in zip(slots, replies):
            text = parse_instruction(reply.text)
            reason = check_instruction(text, pending[slot], cfg.min_words, cfg.max_chars)
            if reason is None and text.lower() in seen:
                reason = "duplicate"
            if reason is None:
                accepted[slot] = (text, [d["id"] for d in pending.pop(slot)])
                seen.add(text.lower())
            else:
                rejected[reason] += 1
                log.debug("induction: slot %d attempt %d rejected (%s): %.120r", slot, attempt, reason, text)
                pending[slot] = sampler.draw()
    stats = {"accepted": len(accepted), "rejected": dict(sorted(rejected.items())),
             "rejected_total": sum(rejected.values()), "unfilled_slots": len(pending),
             "demo_fields_shortened": clipped, "family": family}
    return [accepted[s] for s in sorted(accepted)], stats


def induce_instructions(cfg: InductionConfig, examples: pa.Table, generator: Generator,
                        model_label: str) -> tuple[pa.Table, dict[str, Any]]:
    """The ``instructions`` table and per-dataset counters (accepted, rejected by reason, unfilled)."""
    rows_in = examples.to_pylist()
    rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for salt, dataset in enumerate(sorted({e["dataset"] for e in rows_in})):
        pool = _train_pool(rows_in, dataset, cfg.split)
        accepted, stats[dataset] = induce_dataset(cfg, pool, generator, salt)
        s = stats[dataset]
        log.info("induction %s: %d/%d instructions accepted, %d replies rejected %s, %d slots unfilled",
                 dataset, s["accepted"], cfg.num_instructions, s["rejected_total"], s["rejected"],
                 s["unfilled_slots"])
        if len(accepted) < cfg.min_instructions:
            raise InductionError(
                f"dataset {dataset}: only {len(accepted)} instruction(s) passed validation, "
                f"min_instructions={cfg.min_instructions} (rejections: {s['rejected'] or 'none'}); "
                "raise max_attempts or use a stronger generator")
        rows += [{"dataset": dataset, "instruction_id": i, "text": text, "demo_ids": ids, "model": model_label}
                 for i, (text, ids) in enumerate(accepted)]
    return schemas.conform(rows, schemas.INSTRUCTIONS), stats


def run(cfg: InductionConfig, examples: pa.Table, generator: Generator | None = None,
        workspace: Workspace | None = None) -> dict[str, pa.Table]:
    """Induce instructions for every dataset in ``examples``; counters go to files/induction_stats.json."""
    schemas.validate(examples, schemas.EXAMPLES)
    gen = generator if generator is not None else build_generator(cfg.generator)
    table, stats = induce_instructions(cfg, examples, gen, cfg.generator.label)
    if workspace is not None:
        payload = {"config": asdict(cfg), "datasets": stats}
        (workspace.files / "induction_stats.json").write_text(json.dumps(payload, indent=1, sort_keys=True))
    return {"instructions": table}

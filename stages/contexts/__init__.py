"""Contexts stage (minimal builder): the teacher views of every train example.

Per train example: the privileged view c (the divergence teacher), K auxiliary views (agreement
weights only) and one `negative_<j>` view per negative demonstration (the contrastive bad teacher).
Auxiliary views never show the item's own reference or rationale: donors come from the train split
of the same dataset only, never the item itself nor a duplicate of its prompt, and any donor (or
induced instruction) whose text would contain the item's reference or rationale is skipped — the
reference leaked gold answers into these views (REFERENCE §8.6).

Strategies: `random` donors (seeded per item), `retrieval` donors read from a `neighbors` table, and
`induction` instructions read from an `instructions` table. Layouts are in `templates`.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

import schemas
from stages.contexts.templates import SDI, donor_view, induction_view, privileged_view
from storage import StageSpec

log = logging.getLogger(__name__)

SPEC = StageSpec(name="contexts", version=1, inputs={"examples": schemas.EXAMPLES},
                 outputs={"contexts": schemas.CONTEXTS})


@dataclass(frozen=True)
class ContextsConfig:
    """How the teacher views are built."""

    strategy: Literal["random", "retrieval", "induction"] = "random"
    """Auxiliary views from random donors, retrieved neighbours, or induced instructions."""
    num_views: int = 3
    """K, auxiliary views per example (0 = only privileged and negative views)."""
    donors_per_view: int = 1
    """random/retrieval: solved donor examples shown in each auxiliary view."""
    seed: int = 0
    """Seeds donor and instruction draws (per item, so adding items does not reshuffle others)."""
    instruction: str = SDI
    """Self-distillation instruction closing the privileged and negative views."""
    split: str = "train"
    """Which split gets views (donors always come from the train split)."""

    def __post_init__(self) -> None:
        if self.num_views < 0:
            raise ValueError(f"num_views must be >= 0, got {self.num_views}")
        if self.donors_per_view < 1:
            raise ValueError(f"donors_per_view must be >= 1, got {self.donors_per_view}")
        if not self.instruction.strip():
            raise ValueError("instruction: empty")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def leaks(text: str, item: dict) -> bool:
    """Whether `text` contains the item's reference or rationale (its gold answer material)."""
    for gold in (item["reference"], item.get("rationale")):
        if gold and gold.strip() and gold.strip() in text:
            return True
    return False


def _valid_donor(item: dict, donor: dict) -> bool:
    return (donor["id"] != item["id"] and _norm(donor["prompt"]) != _norm(item["prompt"])
            and not leaks(f"{donor['prompt']}\n{donor['reference']}", item))


def _fill(item: dict, found: list, need: int, what: str) -> list:
    if not found:
        raise ValueError(f"contexts: example {item['id']!r} has no usable {what} in the train split of "
                         f"{item['dataset']!r}")
    if len(found) < need:
        log.warning("contexts: example %s has only %d usable %s for %d slots; reusing them", item["id"],
                    len(found), what, need)
    return [found[i % len(found)] for i in range(need)]


def random_donors(item: dict, pool: list[dict], need: int, seed: int) -> list[dict]:
    """`need` distinct valid donors from `pool`, seeded per item (wrapping if too few exist)."""
    rng = random.Random(f"donors:{seed}:{item['id']}")
    # A small random sample usually suffices; shuffle the whole pool only when it does not
    # (keeps large pools linear overall instead of quadratic).
    first = rng.sample(range(len(pool)), min(len(pool), 8 * need + 16))
    found = [pool[i] for i in first if _valid_donor(item, pool[i])][:need]
    if len(found) < need and len(first) < len(pool):
        seen = set(first)
        rest = [i for i in range(len(pool)) if i not in seen]
        rng.shuffle(rest)
        found += [pool[i] for i in rest if _valid_donor(item, pool[i])][:need - len(found)]
    return _fill(item, found, need, "donor")


def retrieved_donors(item: dict, ranked: list[str], by_id: dict[str, dict], need: int) -> list[dict]:
    """The first `need` valid train-split neighbours by rank (wrapping if too few exist)."""
    found = []
    for nid in ranked:
        donor = by_id.get(nid)
        if donor is not None and donor["dataset"] == item["dataset"] and _valid_donor(item, donor):
            found.append(donor)
            if len(found) == need:
                break
    return _fill(item, found, need, "neighbour")


def _aux_views(cfg: ContextsConfig, items: list[dict], train: list[dict], neighbors: pa.Table | None,
               instructions: pa.Table | None) -> list[dict]:
    if cfg.num_views == 0:
        return []
    need = cfg.num_views * cfg.donors_per_view
    pools: dict[str, list[dict]] = defaultdict(list)
    for r in train:
        pools[r["dataset"]].append(r)
    ranked: dict[str, list[str]] = defaultdict(list)
    texts: dict[str, list[str]] = defaultdict(list)
    if cfg.strategy == "retrieval":
        if neighbors is None:
            raise ValueError("contexts: strategy=retrieval needs the neighbors table")
        for r in sorted(neighbors.to_pylist(), key=lambda r: (r["id"], r["rank"])):
            ranked[r["id"]].append(r["neighbor_id"])
    if cfg.strategy == "induction":
        if instructions is None:
            raise ValueError("contexts: strategy=induction needs the instructions table")
        for r in sorted(instructions.to_pylist(), key=lambda r: (r["dataset"], r["instruction_id"])):
            texts[r["dataset"]].append(r["text"])
    by_id = {r["id"]: r for r in train}
    rows = []
    for item in items:
        if cfg.strategy == "induction":
            usable = [t for t in texts.get(item["dataset"], []) if not leaks(t, item)]
            random.Random(f"instructions:{cfg.seed}:{item['id']}").shuffle(usable)
            chosen = _fill(item, usable, cfg.num_views, "instruction")
            views = [induction_view(item["prompt"], t) for t in chosen]
        else:
            donors = (random_donors(item, pools[item["dataset"]], need, cfg.seed) if cfg.strategy == "random"
                      else retrieved_donors(item, ranked.get(item["id"], []), by_id, need))
            d = cfg.donors_per_view
            views = [donor_view(item["prompt"], [(x["prompt"], x["reference"]) for x in donors[k * d:(k + 1) * d]])
                     for k in range(cfg.num_views)]
        rows += [{"id": item["id"], "view": f"aux_{k}", "strategy": cfg.strategy, "text": v}
                 for k, v in enumerate(views)]
    return rows


def build_negative_views(cfg: ContextsConfig, examples: pa.Table, negatives: pa.Table) -> list[dict]:
    """`negative_<neg_id>` rows: the privileged layout with the reference replaced by the negative's text."""
    items = {r["id"]: r for r in examples.to_pylist() if r["split"] == cfg.split}
    rows = []
    for neg in sorted(negatives.to_pylist(), key=lambda r: (r["id"], r["neg_id"])):
        item = items.get(neg["id"])
        if item is None:
            continue
        rows.append({"id": item["id"], "view": f"negative_{neg['neg_id']}", "strategy": "negative",
                     "text": privileged_view(item["prompt"], neg["text"], cfg.instruction, item["family"])})
    return rows


def run(cfg: ContextsConfig, examples: pa.Table, negatives: pa.Table | None = None,
        neighbors: pa.Table | None = None, instructions: pa.Table | None = None) -> dict[str, pa.Table]:
    """Privileged, auxiliary and (when `negatives` is given) negative views of the `cfg.split` examples."""
    rows_all = examples.to_pylist()
    items = sorted((r for r in rows_all if r["split"] == cfg.split), key=lambda r: r["id"])
    if not items:
        raise ValueError(f"contexts: no examples in split {cfg.split!r}")
    train = sorted((r for r in rows_all if r["split"] == "train"), key=lambda r: r["id"])
    rows = [{"id": r["id"], "view": "privileged", "strategy": "privileged",
             "text": privileged_view(r["prompt"], r["reference"], cfg.instruction, r["family"])} for r in items]
    rows += _aux_views(cfg, items, train, neighbors, instructions)
    if negatives is not None:
        rows += build_negative_views(cfg, examples, negatives)
    table = schemas.conform(rows, schemas.CONTEXTS)
    log.info("contexts: %d views for %d examples (%s, K=%d)", table.num_rows, len(items), cfg.strategy,
             cfg.num_views)
    return {"contexts": table}

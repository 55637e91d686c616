"""Split assignment, leakage removal and per-split caps for the examples table.

- Single-split sources are split by hashing (seed, id): an item's split depends only on its own id, so
  adding or removing other items never moves it, and the same seed always gives the same split.
- A held-out split never shares an id or a normalised prompt with a split used for training: the copy
  in the lower-priority split is dropped (test > validation > train).
- ``limit`` keeps the first N of each split after a seeded shuffle of the id-sorted rows, so the result
  does not depend on the order the source listed its records in.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from typing import Any

from stages.ingest.formats import normalise

log = logging.getLogger(__name__)

ORDER = ("train", "validation", "test")
_PRIORITY = {"test": 0, "validation": 1, "train": 2}


def hash_unit(seed: int, example_id: str) -> float:
    """A uniform number in [0, 1) determined by (seed, id) alone."""
    digest = hashlib.sha256(f"{seed}\x1f{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_pool(rows: list[dict[str, Any]], test_fraction: float, seed: int) -> None:
    """Give every row whose split is "pool" the split test (hash < test_fraction) or train, in place."""
    for row in rows:
        if row["split"] == "pool":
            row["split"] = "test" if hash_unit(seed, row["id"]) < test_fraction else "train"


def drop_leaks(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter]:
    """Remove duplicate ids within a split and any id or normalised prompt already in a held-out split."""
    best_id: dict[str, int] = {}
    best_prompt: dict[str, int] = {}
    for row in rows:
        p, text = _PRIORITY[row["split"]], normalise(row["prompt"])
        best_id[row["id"]] = min(p, best_id.get(row["id"], p))
        best_prompt[text] = min(p, best_prompt.get(text, p))
    kept, seen, dropped = [], set(), Counter()
    for row in rows:
        p = _PRIORITY[row["split"]]
        if best_id[row["id"]] < p or best_prompt[normalise(row["prompt"])] < p:
            dropped[f"{row['split']}: also in a held-out split"] += 1
        elif row["id"] in seen:
            dropped[f"{row['split']}: duplicate id"] += 1
        else:
            seen.add(row["id"])
            kept.append(row)
    return kept, dropped


def cap(rows: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """Rows ordered train, validation, test; each split shuffled by seed and cut to ``limit``."""
    out: list[dict[str, Any]] = []
    for split in ORDER:
        part = sorted((r for r in rows if r["split"] == split), key=lambda r: r["id"])
        random.Random(f"{seed}\x1f{split}").shuffle(part)
        out.extend(part if limit is None else part[:limit])
    return out

"""Split assignment, duplicate ids, leakage removal and per-split caps for the examples table.

- Ids are unique: two records with the same id stop the stage, naming both rows, unless the config
  says ``on_duplicate: keep_first`` (then one copy per id is kept, a held-out split's before a train
  copy, and the dropped ones are counted).
- Single-split sources are split by hashing (seed, id) into u in [0, 1): test when u < test_fraction,
  validation when u < test_fraction + (1 − test_fraction)·validation_fraction, else train. An item's
  split depends only on its own id, so adding or removing other items never moves it, the same seed
  always gives the same split, and changing validation_fraction never moves an item into or out of
  test (only between train and validation).
- A held-out split never shares a normalised prompt with a split used for training: the copy in the
  lower-priority split is dropped (test > validation > train).
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
from stages.ingest.sources import IngestError

log = logging.getLogger(__name__)

ORDER = ("train", "validation", "test")
_PRIORITY = {"test": 0, "validation": 1, "train": 2}


def hash_unit(seed: int, example_id: str) -> float:
    """A uniform number in [0, 1) determined by (seed, id) alone."""
    digest = hashlib.sha256(f"{seed}\x1f{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pool_split(u: float, test_fraction: float, validation_fraction: float) -> str:
    """The split of a pooled item whose hash is ``u``: test below ``test_fraction``, then validation for
    ``validation_fraction`` of the rest of [0, 1), then train."""
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + (1.0 - test_fraction) * validation_fraction else "train"


def assign_pool(rows: list[dict[str, Any]], test_fraction: float, seed: int,
                validation_fraction: float = 0.0) -> None:
    """Give every row whose split is "pool" its hash split (`pool_split`), in place."""
    for row in rows:
        if row["split"] == "pool":
            row["split"] = pool_split(hash_unit(seed, row["id"]), test_fraction, validation_fraction)


def dedupe_ids(rows: list[dict[str, Any]], policy: str) -> tuple[list[dict[str, Any]], Counter, list[str]]:
    """Rows with unique ids, the count of dropped copies and their ids (``policy`` keep_first), or an
    IngestError naming the first two rows sharing an id (``policy`` error).

    A row's ``_origin`` says where it came from and ``_hashed`` whether its id is a hash of the prompt."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        group = groups.setdefault(row["id"], [])
        if group and policy == "error":
            raise IngestError(_duplicate_message(rows[group[0]], row))
        group.append(i)
    keep = {min(g, key=lambda i: (_PRIORITY[rows[i]["split"]], i)) for g in groups.values()}
    dropped_ids = [row["id"] for i, row in enumerate(rows) if i not in keep]
    dropped = Counter({"duplicate id (on_duplicate: keep_first)": len(dropped_ids)} if dropped_ids else {})
    return [row for i, row in enumerate(rows) if i in keep], dropped, dropped_ids


def _duplicate_message(first: dict[str, Any], second: dict[str, Any]) -> str:
    why = (" (the source has no id, so the id is a hash of the prompt: both rows ask the same question)"
           if first.get("_hashed") else "")
    a, b = first["_origin"], second["_origin"]
    source = a.rsplit(", ", 1)[0]
    if b.startswith(source + ", "):  # same file: name it once
        b = b[len(source) + 2:]
    return (f"duplicate id {first['id']!r}: {a} and {b}{why}; ids must be unique "
            "(set on_duplicate: keep_first to keep one copy per id)")


def drop_leaks(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter]:
    """Remove any row whose normalised prompt is also in a higher-priority (held-out) split."""
    best: dict[str, int] = {}
    for row in rows:
        p, text = _PRIORITY[row["split"]], normalise(row["prompt"])
        best[text] = min(p, best.get(text, p))
    kept, dropped = [], Counter()
    for row in rows:
        if best[normalise(row["prompt"])] < _PRIORITY[row["split"]]:
            dropped[f"{row['split']}: also in a held-out split"] += 1
        else:
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

"""The ingest stage: a dataset source -> the ``examples`` table (schema ``schemas.EXAMPLES``).

One adapter per dataset turns records in the source's own schema (bundled package data, a hub dataset,
or a local file in the hub schema or in any layout with a column mapping) into examples: the student
prompt, the reference the teacher sees, the canonical answer, tests for code and tool use. The stage
then fixes the splits (a dataset's own train/validation/test, or a seeded hash split into
train/validation/test), removes anything
that would leak a held-out item into training, and applies the per-split limit. Ids are stable:
``<dataset>/<native id>`` or ``<dataset>/<hash of the prompt>``, and unique: a repeated id stops the
stage naming both rows unless ``on_duplicate: keep_first`` is set. Nothing is dropped silently: every
dropped record is counted by reason in the log and in the artifact's ``files/ingest_report.json``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

import schemas
from stages.ingest.config import SPLITS, IngestConfig
from stages.ingest.formats import Draft, RecordError, SkipRecord, content_hash, dumps, optional_text
from stages.ingest.registry import REGISTRY, Adapter
from stages.ingest.sources import IngestError, Record, read_hub, read_local
from stages.ingest.splits import assign_pool, cap, dedupe_ids, drop_leaks

log = logging.getLogger(__name__)

NAME = "ingest"
VERSION = 3  # 3: single-split sources also get a validation split (validation_fraction)
REPORT_FILE = "ingest_report.json"

__all__ = ["NAME", "REGISTRY", "REPORT_FILE", "VERSION", "IngestConfig", "IngestError", "load_records", "run"]


def run(cfg: IngestConfig, cache_dir: Path, workspace: Any = None) -> dict[str, pa.Table]:
    """Read ``cfg``'s source and return ``{"examples": table}`` conformed to ``schemas.EXAMPLES``.

    With a ``workspace`` (storage.Workspace), what was dropped and why is written to its
    ``files/ingest_report.json``."""
    adapter = REGISTRY[cfg.dataset]
    records, where = load_records(cfg, Path(cache_dir))
    rows, skipped = _build_rows(cfg, adapter, records, where)
    assign_pool(rows, cfg.test_fraction, cfg.seed, cfg.validation_fraction)
    rows, duplicates, duplicate_ids = dedupe_ids(rows, cfg.on_duplicate)
    rows, leaks = drop_leaks(rows)
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in cap(rows, cfg.limit, cfg.seed)]
    dropped = skipped + duplicates + leaks
    for reason, n in sorted(dropped.items()):
        log.log(logging.WARNING if reason in duplicates else logging.INFO,
                "ingest %s: dropped %d record(s): %s", cfg.label, n, reason)
    if workspace is not None:
        report = {"records": len(records), "examples": len(rows), "dropped": dict(sorted(dropped.items())),
                  "duplicate_ids": duplicate_ids}
        (Path(workspace.files) / REPORT_FILE).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    if not rows:
        why = "; ".join(f"{n} {r}" for r, n in sorted(dropped.items())) or "the source is empty"
        raise IngestError(f"{where}: no examples left ({why})")
    table = schemas.conform(rows, schemas.EXAMPLES)
    counts = Counter(table.column("split").to_pylist())
    log.info("ingest %s: %d examples (%s) from %s", cfg.label, table.num_rows,
             ", ".join(f"{s} {counts[s]}" for s in SPLITS if counts[s]), where)
    return {"examples": table}


def load_records(cfg: IngestConfig, cache_dir: Path) -> tuple[list[Record], str]:
    """Raw records of the configured source and a short description of where they came from."""
    adapter = REGISTRY[cfg.dataset]
    if cfg.source == "bundled":
        assert adapter.bundled is not None  # guaranteed by IngestConfig validation
        return adapter.bundled(cfg, cache_dir), f"bundled {cfg.dataset}"
    if cfg.source == "hub":
        hub_id = cfg.path or adapter.hub_id
        assert hub_id is not None
        return read_hub(hub_id, cfg.subset or adapter.hub_subset, cfg.revision), hub_id
    assert cfg.path is not None
    return read_local(Path(cfg.path).expanduser(), cfg.subset), cfg.path


def _target(native: str | None, mapping: dict[str, str], where: str) -> str:
    if native is None:
        return "pool"
    if native in mapping:
        return mapping[native]
    if native in SPLITS:
        return native
    raise IngestError(f"{where}: split {native!r} is not train, validation or test; map it with "
                      f"splits: {{{native}: train|validation|test|pool|skip}}")


def _build_rows(cfg: IngestConfig, adapter: Adapter, records: list[Record],
                where: str) -> tuple[list[dict[str, Any]], Counter]:
    mapping = dict(adapter.splits) | dict(cfg.splits)
    split_column = dict(cfg.columns).get("split", "split")
    family = cfg.family or adapter.family
    rows, skipped = [], Counter()
    for rec in records:
        native = rec.split if rec.split is not None else optional_text(rec.data.get(split_column))
        origin = rec.origin or f"{where}, {rec.split + ' ' if rec.split else ''}row {rec.index}"
        target = _target(native, mapping, origin)
        if target == "skip":
            skipped[f"split {native!r} is skipped"] += 1
            continue
        try:
            draft = adapter.convert(rec.data, cfg)
            row = _row(cfg, family, draft, target, native)
            rows.append(row | {"_origin": origin, "_hashed": draft.key is None})  # for dedupe_ids
        except SkipRecord as e:
            skipped[str(e)] += 1
        except RecordError as e:
            split = f" ({native})" if native and not rec.split else ""
            raise IngestError(f"{origin}{split}: {e}") from None
    return rows, skipped


def _row(cfg: IngestConfig, family: str, draft: Draft, split: str, native: str | None) -> dict[str, Any]:
    for field in ("prompt", "reference", "answer"):
        if not str(getattr(draft, field) or "").strip():
            raise RecordError(f"empty {field}")
    meta = dict(draft.meta)
    if native is not None:
        meta["native_split"] = native
    key = draft.key or content_hash(draft.prompt)
    return {
        "id": f"{cfg.label}/{key}", "dataset": cfg.label, "split": split, "family": family,
        "prompt": draft.prompt, "reference": draft.reference, "rationale": draft.rationale,
        "options": draft.options, "answer": draft.answer, "tests": draft.tests, "meta": dumps(meta),
    }

"""`unisd data check`: how a local file would be ingested, before any run.

It reads the file with the ingest stage's own reader and adapter (`load_records`, the registry's
``convert``, the stage's row checks), so what it shows is what ingest will do: the first rows as the
student will see them (prompt, options, answer, reference) and every record ingest would reject or drop,
one line each with where it is and why. Nothing is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.ingest import _row, _target, load_records
from stages.ingest.chat import is_chat, split_lettered_options
from stages.ingest.config import IngestConfig
from stages.ingest.formats import LETTERS, RecordError, SkipRecord, optional_text
from stages.ingest.registry import REGISTRY
from stages.ingest.sources import IngestError, Record


@dataclass
class CheckResult:
    """What ingest would make of a source."""

    source: str
    family: str
    guessed: bool
    records: int
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(origin, example row) of every accepted record."""
    rejected: list[str] = field(default_factory=list)
    """One line per rejected or dropped record: where, then why."""
    errors: int = 0
    """Rejected records that would stop the stage (malformed, not merely skipped)."""


def guess_family(records: list[Record], columns: dict[str, str]) -> str:
    """mcqa when the first record has options (a column or lettered lines), code when it has tests, else free."""
    if not records:
        return "free"
    rec = records[0].data
    if any(k in rec for k in ("options", "choices")) or "options" in columns:
        return "mcqa"
    if "tests" in rec or "tests" in columns:
        return "code"
    prompt = rec.get(columns.get("prompt", "prompt"))
    for key in ("messages", "input", "question"):
        prompt = prompt if prompt is not None else rec.get(key)
    if is_chat(prompt):
        prompt = next((m.get("content") for m in reversed(prompt) if m.get("role") == "user"), "")
    text = optional_text(prompt) if isinstance(prompt, str) else None
    return "mcqa" if text and split_lettered_options(text) else "free"


def check(path: str, family: str | None = None, columns: dict[str, str] | None = None,
          dataset: str = "local") -> CheckResult:
    """Read ``path`` as ingest would (``dataset`` local with ``family`` and ``columns``, or a registry
    dataset's own schema) and collect accepted rows and rejected records."""
    columns = dict(columns or {})
    probe = IngestConfig(dataset=dataset, source="local", path=path, columns=columns,
                         family=family or ("free" if dataset == "local" else None))
    records, where = load_records(probe, Path("."))
    guessed = dataset == "local" and family is None
    cfg = probe
    if guessed:
        cfg = IngestConfig(dataset="local", source="local", path=path, columns=columns,
                           family=guess_family(records, columns))
    adapter = REGISTRY[cfg.dataset]
    result = CheckResult(where, cfg.family or adapter.family, guessed, len(records))
    mapping = dict(adapter.splits) | dict(cfg.splits)
    split_column = columns.get("split", "split")
    first_origin: dict[str, str] = {}
    for rec in records:
        origin = rec.origin or f"{where}, {rec.split + ' ' if rec.split else ''}row {rec.index}"
        native = rec.split if rec.split is not None else optional_text(rec.data.get(split_column))
        try:
            target = _target(native, mapping, origin)
            if target == "skip":
                raise SkipRecord(f"split {native!r} is skipped")
            row = _row(cfg, result.family, adapter.convert(rec.data, cfg), target, native)
        except SkipRecord as e:
            result.rejected.append(f"{origin}: dropped: {e}")
            continue
        except (RecordError, IngestError) as e:
            result.rejected.append(f"{origin}: {str(e).removeprefix(origin + ': ')}")
            result.errors += 1
            continue
        if row["id"] in first_origin:
            result.rejected.append(f"{origin}: duplicate id {row['id']!r} (first at {first_origin[row['id']]})")
            result.errors += 1
            continue
        first_origin[row["id"]] = origin
        result.rows.append((origin, row))
    return result


def _indent(text: str, pad: str) -> str:
    return "\n".join(pad + line for line in text.split("\n"))


def render(result: CheckResult, show: int = 3) -> str:
    """The report printed by `unisd data check`."""
    how = " (guessed; pass --family to choose)" if result.guessed else ""
    out = [f"{result.source}: {result.records} records, family {result.family}{how}"]
    for origin, row in result.rows[:show]:
        split = "train or test by hash" if row["split"] == "pool" else row["split"]
        out += ["", f"{origin} -> {row['id']} (split: {split})", "  prompt:", _indent(row["prompt"], "    |")]
        if row["options"]:
            out.append("  options: " + " | ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(row["options"])))
        out.append(f"  answer: {row['answer']}")
        if row["reference"] != f"Answer: {row['answer']}":
            out += ["  reference:", _indent(row["reference"], "    |")]
    splits = Counter(row["split"] for _, row in result.rows)
    out += ["", f"{len(result.rows)} would be ingested ("
            + ", ".join(f"{'train/test by hash' if s == 'pool' else s} {n}" for s, n in sorted(splits.items()))
            + f"), {len(result.rejected)} rejected"
            + (f" ({result.errors} would stop ingest)" if result.errors else "")]
    out += result.rejected
    return "\n".join(out)


def command(path: str, family: str | None, dataset: str, pairs: list[str], show: int) -> int:
    """`unisd data check PATH [--family F] [--dataset D] [--rows N] [field=column ...]`: print, return the exit
    status (0: every record would be ingested; 1: some would be rejected)."""
    columns = {}
    for pair in pairs:
        name, _, col = pair.partition("=")
        if not name or not col:
            raise ValueError(f"mapping {pair!r}: expected field=column (e.g. prompt=question)")
        columns[name] = col
    result = check(path, family, columns, dataset)
    print(render(result, show))
    return 1 if result.rejected else 0

"""Raw records from a dataset source: the HF hub, a local file or directory, or a bundled package.

Records come back as plain dicts in the source's own schema, tagged with their native split (None when
the source has a single split) so the adapters never see file formats and the split logic never sees
dataset fields. Images are never decoded: an adapter only needs to know whether one is present.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class IngestError(ValueError):
    """A dataset source cannot be read or one of its records is malformed (one line: where and why)."""


@dataclass(frozen=True)
class Record:
    """One raw record in its source schema."""

    split: str | None
    """Native split name, or None for a single-split source."""
    index: int
    """0-based position within its native split (for error messages)."""
    data: dict[str, Any]


def read_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.parquet/.csv file as dicts (CSV cells stay strings)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise IngestError(f"{path}: expected a JSON list of objects")
        return data
    if suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    raise IngestError(f"{path}: unsupported file type {suffix!r} (use {', '.join(FILE_SUFFIXES)})")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise IngestError(f"{path}, line {n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise IngestError(f"{path}, line {n}: expected a JSON object")
            rows.append(row)
    return rows


def read_local(path: Path, subset: str | None = None) -> list[Record]:
    """Records of a local file, a directory of per-split files, or a `save_to_disk` directory."""
    if not path.exists():
        raise IngestError(f"{path}: no such file or directory")
    if path.is_file():
        return [Record(None, i, r) for i, r in enumerate(read_file(path))]
    if subset and (path / subset).is_dir():
        path = path / subset
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        import datasets

        return from_datasets(datasets.load_from_disk(str(path)))
    files = sorted(
        f for d in (path, path / "data") if d.is_dir()
        for f in d.iterdir() if f.is_file() and f.suffix.lower() in FILE_SUFFIXES
    )
    if not files:
        raise IngestError(f"{path}: no {', '.join(FILE_SUFFIXES)} files and no saved dataset found")
    records: list[Record] = []
    counts: dict[str, int] = {}
    for f in files:
        split = split_of_file(f)
        for r in read_file(f):
            records.append(Record(split, counts.get(split, 0), r))
            counts[split] = counts.get(split, 0) + 1
    return records


def split_of_file(path: Path) -> str:
    """``train.jsonl`` -> train; ``validation-00000-of-00001.parquet`` -> validation (HF layout)."""
    return path.name.split(".")[0].split("-")[0]


def read_hub(hub_id: str, subset: str | None, revision: str | None) -> list[Record]:
    """Every split of a hub dataset via ``datasets.load_dataset`` (needs network or the HF cache)."""
    import datasets

    try:
        loaded = datasets.load_dataset(hub_id, name=subset, revision=revision)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise IngestError(f"could not load {hub_id!r} (subset {subset!r}) from the hub: {first}") from e
    return from_datasets(loaded)


def from_datasets(obj: Any) -> list[Record]:
    """Records of a ``datasets.Dataset`` (one split) or ``DatasetDict`` (its splits, in order)."""
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        return [Record(name, i, r) for name, ds in obj.items() for i, r in enumerate(_rows(ds))]
    if isinstance(obj, datasets.Dataset):
        return [Record(None, i, r) for i, r in enumerate(_rows(obj))]
    raise IngestError(f"expected a Dataset or DatasetDict, got {type(obj).__name__}")


def _rows(ds: Any) -> list[dict[str, Any]]:
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds.to_list()

"""Raw records from a dataset source: the HF hub, a local file or directory, or a bundled package.

Records come back as plain dicts in the source's own schema, tagged with their native split (None when
the source has a single split) and with where they came from (file and line, or split and row), so the
adapters never see file formats, the split logic never sees dataset fields, and every error can name
the exact row. Text files are read as UTF-8 with or without a byte-order mark; anything that would
lose data silently (bytes that are not UTF-8, a CSV header naming a column twice, a CSV row with more
or fewer cells than the header, a JSON object with a repeated key) is a one-line error naming the file
and line. Images are never decoded: an adapter only needs to know whether one is present.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
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
    origin: str = ""
    """Where the record came from, for error messages: "<file>, line N", "<file>, row N" (Parquet,
    JSON lists) or empty (the caller names the source, split and row)."""


def read_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.parquet/.csv file as dicts (CSV cells stay strings)."""
    return [row for _, row in read_rows(path)]


def file_records(path: Path, split: str | None = None, start: int = 0) -> list[Record]:
    """The rows of one file as records of ``split``, numbered from ``start``."""
    return [Record(split, start + i, row, origin) for i, (origin, row) in enumerate(read_rows(path))]


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(origin, row) pairs of a .jsonl/.json/.parquet/.csv file; origin names the file and line/row."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise IngestError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
        return [(f"{path}, row {i}", r) for i, r in enumerate(rows)]
    if suffix == ".csv":
        return _read_csv(path)
    raise IngestError(f"{path}: unsupported file type {suffix!r} (use {', '.join(FILE_SUFFIXES)})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_text(path: Path) -> str:
    """A text file as UTF-8 (a leading byte-order mark is dropped); other bytes name file, line and offset."""
    data = path.read_bytes()
    bom = data.startswith(codecs.BOM_UTF8)
    body = data[len(codecs.BOM_UTF8):] if bom else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise IngestError(f"{path}: the file is UTF-16; save it as UTF-8") from None
        line = body.count(b"\n", 0, e.start) + 1
        offset = e.start + (len(codecs.BOM_UTF8) if bom else 0)
        raise IngestError(f"{path}, line {line}: not valid UTF-8 (byte 0x{body[e.start]:02x} at offset "
                          f"{offset}); save the file as UTF-8") from None


def _unique_keys(where: str):
    """A json ``object_pairs_hook`` that refuses an object naming the same key twice (json keeps the last)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise IngestError(f"{where}: key {k!r} appears twice in one object")
            out[k] = v
        return out
    return hook


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys(where))
        except json.JSONDecodeError as e:
            raise IngestError(f"{where}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise IngestError(f"{where}: expected a JSON object")
        rows.append((where, row))
    return rows


def _read_json(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(read_text(path), object_pairs_hook=_unique_keys(str(path)))
    except json.JSONDecodeError as e:
        raise IngestError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise IngestError(f"{path}: expected a JSON list of objects")
    return [(f"{path}, row {i}", r) for i, r in enumerate(data)]


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    rows: list[tuple[str, dict[str, Any]]] = []
    line = 1
    try:
        header = next(reader, None)
        if header is None:
            return rows
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise IngestError(f"{path}, line 1: column {twice[0]!r} appears twice in the header")
        line = reader.line_num + 1
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not cells:  # a blank line
                continue
            if len(cells) != len(header):
                raise IngestError(f"{path}, line {start}: {len(cells)} cells, "
                                  f"the header has {len(header)} columns")
            rows.append((f"{path}, line {start}", dict(zip(header, cells, strict=True))))
    except csv.Error as e:
        raise IngestError(f"{path}, line {line}: invalid CSV ({e})") from None
    return rows


def read_local(path: Path, subset: str | None = None) -> list[Record]:
    """Records of a local file, a directory of per-split files, or a `save_to_disk` directory."""
    if not path.exists():
        raise IngestError(f"{path}: no such file or directory")
    if path.is_file():
        return file_records(path)
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
        part = file_records(f, split, counts.get(split, 0))
        counts[split] = counts.get(split, 0) + len(part)
        records += part
    return records


def split_of_file(path: Path) -> str:
    """``train.jsonl`` -> train; ``validation-00000-of-00001.parquet`` -> validation (HF layout)."""
    return path.name.split(".")[0].split("-")[0]


def read_hub(hub_id: str, subset: str | None, revision: str | None) -> list[Record]:
    """Every split of a hub dataset via ``datasets.load_dataset`` (needs network or the HF cache)."""
    import datasets

    try:
        loaded = datasets.load_dataset(hub_id, name=subset, revision=revision)
    except Exception as e:  # any loader failure becomes one clear line
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

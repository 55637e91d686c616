"""DuckDB catalog over the store: views only, rebuilt as a new file and swapped in atomically.

``<root>/catalog.duckdb`` holds one view per table name (all artifacts' ``<table>.parquet`` files,
with ``stage`` and ``artifact_key`` columns) and an ``artifacts`` view over every manifest. It holds no
data, so it can always be rebuilt; building it in a temp file and ``os.replace``-ing it means a reader
that has the old file open is unaffected and a writer never waits for a reader. Paths inside the views
are absolute, so the plain ``duckdb`` CLI works on the file from any directory.

Globs match only ``<stage>/<hex key>/`` directories, never the hidden ``.tmp-*``/``.partial-*`` ones,
so a half-written artifact is invisible to SQL just as it is to ``Store.find``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa

from .keys import NAME_RE

log = logging.getLogger(__name__)

CATALOG = "catalog.duckdb"
_DIRS = "[a-z]*/[0-9a-f]*"
"""Stage dirs start with a letter, finished artifact dirs with a hex digit; hidden work dirs with '.'."""
_MANIFEST_COLUMNS = {
    "stage": "VARCHAR", "version": "INTEGER", "key": "VARCHAR", "config": "JSON", "inputs": "JSON",
    "rows": "JSON", "outputs": "JSON", "timings": "JSON", "package_version": "VARCHAR",
    "host": "VARCHAR", "python": "VARCHAR", "git_sha": "VARCHAR", "extra": "JSON",
}
_RESERVED = {"artifacts"}


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _table_names(root: Path) -> list[str]:
    names = {p.stem for p in root.glob(f"{_DIRS}/*.parquet") if p.is_file()}
    skipped = sorted(n for n in names if not NAME_RE.match(n) or n in _RESERVED)
    if skipped:
        log.warning("catalog: no view for table file name(s) %s", skipped)
    return sorted(names - set(skipped))


def _view_sql(root: Path, table: str) -> str:
    glob = _sql_str(f"{root}/{_DIRS}/{table}.parquet")
    return (f'CREATE VIEW "{table}" AS SELECT * EXCLUDE (filename), '
            f"split_part(filename, '/', -3) AS stage, split_part(filename, '/', -2) AS artifact_key "
            f"FROM read_parquet({glob}, union_by_name = true, filename = true)")


def _artifacts_sql(root: Path) -> str:
    if not any(root.glob(f"{_DIRS}/manifest.json")):
        cols = ", ".join(f"NULL::{t} AS {c}" for c, t in _MANIFEST_COLUMNS.items())
        return f"CREATE VIEW artifacts AS SELECT {cols} WHERE false"
    glob = _sql_str(f"{root}/{_DIRS}/manifest.json")
    columns = "{" + ", ".join(f"{c}: '{t}'" for c, t in _MANIFEST_COLUMNS.items()) + "}"
    return (f"CREATE VIEW artifacts AS SELECT * FROM read_json({glob}, columns = {columns}, "
            f"format = 'auto', maximum_object_size = 67108864)")


def _build(root: Path, path: Path) -> dict[str, str]:
    """Create the views in a new database file; returns view name -> error for views that failed."""
    failed = {}
    con = duckdb.connect(str(path))
    try:
        views = [(t, _view_sql(root, t)) for t in _table_names(root)] + [("artifacts", _artifacts_sql(root))]
        for name, sql in views:
            try:
                con.execute(sql)
            except duckdb.Error as e:  # one unreadable file must not hide every other table
                failed[name] = str(e).splitlines()[0]
    finally:
        con.close()
    return failed


def refresh_catalog(root: str | Path) -> Path:
    """Rebuild ``<root>/catalog.duckdb`` (views only) in a temp file and atomically swap it in.

    A view whose files cannot be read is left out with a warning; the build is retried first, since
    the usual cause is an artifact removed by gc while the views were being bound.
    """
    root = Path(root).expanduser().resolve()
    final = root / CATALOG
    for attempt in range(3):
        tmp = root / f".catalog-{uuid.uuid4().hex}.duckdb"
        try:
            failed = _build(root, tmp)
            if failed and attempt < 2:
                continue
            for name, err in failed.items():
                log.warning("catalog: no view %s: %s", name, err)
            os.replace(tmp, final)
            return final
        finally:
            for p in (tmp, tmp.with_name(tmp.name + ".wal")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
    raise AssertionError("unreachable")


def query(root: str | Path, sql: str) -> pa.Table:
    """Refresh the catalog, then run ``sql`` on it read-only and return the result as Arrow."""
    path = refresh_catalog(root)
    con = duckdb.connect(str(path), read_only=True)
    try:
        rel = con.sql(sql)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    finally:
        con.close()


def _cell(value: object, max_width: int | None) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    text = text.replace("\n", "\\n").replace("\t", " ")
    if max_width is not None and len(text) > max_width:
        text = text[: max_width - 1] + "…"
    return text


def _plain_text(table: pa.Table, max_width: int) -> str:
    names = table.column_names
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]  # by position: names may repeat
    rows = [[_cell(col[r], max_width) for col in columns] for r in range(table.num_rows)]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
               for t in table.schema.types]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out)


def format_table(table: pa.Table, fmt: str = "table", *, max_width: int = 64) -> str:
    """Render a query result as ``table`` (aligned text, cells cut at ``max_width``), ``csv`` or ``json``."""
    if fmt == "table":
        return _plain_text(table, max_width)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow(["" if v is None else
                             json.dumps(v, default=str) if isinstance(v, (list, dict)) else v
                             for v in row.values()])
        return buf.getvalue()
    if fmt == "json":
        return json.dumps(table.to_pylist(), default=str, ensure_ascii=False)
    raise ValueError(f"format must be one of table, csv, json; got {fmt!r}")

"""DuckDB catalog over the store: views only, rebuilt as a new file and swapped in atomically, and the
read-only SQL door (``query``) that answers questions over it.

``<root>/catalog.duckdb`` holds one view per table name (the ``<table>.parquet`` files of every intact
artifact, with ``stage`` and ``artifact_key`` columns), an ``artifacts`` view over their manifests and
``catalog_files`` (every file the views read). It holds no data, so it can always be rebuilt; building
it in a temp file and ``os.replace``-ing it means a reader that has the old file open keeps its
snapshot and a writer never waits for a reader. Paths inside the views are absolute, so the plain
``duckdb`` CLI works on the file from any directory.

The views list their files explicitly. Only finished ``<stage>/<hex key>/`` directories whose files
pass the integrity read check (``storage.integrity``) are listed, so half-written (``.tmp-*``),
quarantined (``.quarantine-*``) and corrupt artifacts are invisible to SQL just as they are to
``Store.find``, and one bad file never hides the other artifacts of its table.

``query`` opens the catalog read-only with DuckDB's external access off except for the files in
``catalog_files`` (``allowed_paths``), locks that configuration, and runs only SELECT statements (and
EXPLAIN of one): COPY, ATTACH, CREATE, SET, INSTALL/LOAD and reads of any other file are refused.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa

from .artifact import read_manifest
from .integrity import MANIFEST, check_artifact
from .keys import KEY_RE, NAME_RE
from .locking import file_lock

log = logging.getLogger(__name__)

CATALOG = "catalog.duckdb"
FILES_VIEW = "catalog_files"
_MANIFEST_COLUMNS = {
    "stage": "VARCHAR", "version": "INTEGER", "key": "VARCHAR", "config": "JSON", "inputs": "JSON",
    "rows": "JSON", "outputs": "JSON", "timings": "JSON", "package_version": "VARCHAR",
    "host": "VARCHAR", "python": "VARCHAR", "git_sha": "VARCHAR", "extra": "JSON", "files": "JSON",
}
_RESERVED = {"artifacts", FILES_VIEW}
_EXPLAIN_RE = re.compile(r"^\s*explain(\s+analyze)?\b", re.IGNORECASE)


class SqlRefused(ValueError):
    """A statement the read-only SQL door does not run (anything but a SELECT)."""


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join(_sql_str(p) for p in paths) + "]"


def refresh_lock(root: Path, ident: str) -> Path:
    """The lock a refresh holds while it builds ``.catalog-<ident>.duckdb`` (gc skips held ones)."""
    return root / f".catalog-{ident}.lock"


def _scan(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Table name -> Parquet files, and the manifests, of every intact artifact under ``root``."""
    tables: dict[str, list[str]] = {}
    manifests = []
    for sdir in sorted(p for p in root.iterdir() if p.is_dir() and NAME_RE.match(p.name)):
        for path in sorted(p for p in sdir.iterdir() if KEY_RE.match(p.name) and p.is_dir()):
            manifest = read_manifest(path, sdir.name, path.name)
            if manifest is None:
                continue
            if problems := check_artifact(path, manifest, tables_only=True):
                log.warning("catalog: leaving out %s/%s: %s (the next run quarantines and recomputes it)",
                            sdir.name, path.name[:12], "; ".join(problems))
                continue
            manifests.append(str(path / MANIFEST))
            for table in sorted(manifest.get("outputs", {})):
                tables.setdefault(table, []).append(str(path / f"{table}.parquet"))
    skipped = sorted(n for n in tables if not NAME_RE.match(n) or n in _RESERVED)
    if skipped:
        log.warning("catalog: no view for table name(s) %s", skipped)
    return {t: f for t, f in tables.items() if t not in skipped}, manifests


def _view_sql(table: str, files: list[str]) -> str:
    return (f'CREATE VIEW "{table}" AS SELECT * EXCLUDE (filename), '
            f"split_part(filename, '/', -3) AS stage, split_part(filename, '/', -2) AS artifact_key "
            f"FROM read_parquet({_sql_list(files)}, union_by_name = true, filename = true)")


def _artifacts_sql(manifests: list[str]) -> str:
    if not manifests:
        cols = ", ".join(f"NULL::{t} AS {c}" for c, t in _MANIFEST_COLUMNS.items())
        return f"CREATE VIEW artifacts AS SELECT {cols} WHERE false"
    columns = "{" + ", ".join(f"{c}: '{t}'" for c, t in _MANIFEST_COLUMNS.items()) + "}"
    return (f"CREATE VIEW artifacts AS SELECT * FROM read_json({_sql_list(manifests)}, columns = {columns}, "
            f"format = 'auto', maximum_object_size = 67108864)")


def _files_sql(paths: list[str]) -> str:
    if not paths:
        return f"CREATE VIEW {FILES_VIEW} AS SELECT NULL::VARCHAR AS path WHERE false"
    return f"CREATE VIEW {FILES_VIEW} AS SELECT unnest({_sql_list(paths)}) AS path"


def _readable(con: duckdb.DuckDBPyConnection, path: str) -> bool:
    try:
        con.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_str(path)})")
        return True
    except duckdb.Error as e:
        log.warning("catalog: leaving out unreadable file %s: %s", path, str(e).splitlines()[0])
        return False


def _build(root: Path, path: Path) -> dict[str, str]:
    """Create the views in a new database file; returns view name -> error for views that failed."""
    tables, manifests = _scan(root)
    failed = {}
    con = duckdb.connect(str(path))
    try:
        listed = list(manifests)
        for table, files in tables.items():
            try:
                con.execute(_view_sql(table, files))
            except duckdb.Error as e:  # a file DuckDB cannot read: leave out that file, not the view
                files = [f for f in files if Path(f).exists() and _readable(con, f)]
                try:
                    if not files:
                        raise
                    con.execute(_view_sql(table, files))
                except duckdb.Error:
                    failed[table] = str(e).splitlines()[0]
                    continue
            listed += files
        try:
            con.execute(_artifacts_sql(manifests))
        except duckdb.Error as e:
            failed["artifacts"] = str(e).splitlines()[0]
        con.execute(_files_sql(sorted(listed)))
    finally:
        con.close()
    return failed


def refresh_catalog(root: str | Path) -> Path:
    """Rebuild ``<root>/catalog.duckdb`` (views only) in a temp file and atomically swap it in.

    A view whose files cannot be read is left out with a warning; the build is retried first, since
    the usual cause is an artifact removed by gc while the views were being bound. The temp file's
    lock (``refresh_lock``) tells ``Store.gc`` that it is live.
    """
    root = Path(root).expanduser().resolve()
    final = root / CATALOG
    for attempt in range(3):
        ident = uuid.uuid4().hex
        tmp = root / f".catalog-{ident}.duckdb"
        with file_lock(refresh_lock(root, ident)):
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


def _check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise SqlRefused unless every statement of ``sql`` is a SELECT (or a plain EXPLAIN of one)."""
    for stmt in con.extract_statements(sql):
        kind, text = stmt.type, stmt.query
        if kind == duckdb.StatementType.EXPLAIN and (m := _EXPLAIN_RE.match(text)) and not m[1]:
            inner = con.extract_statements(text[m.end():])
            kind = inner[0].type if len(inner) == 1 else kind
        if kind != duckdb.StatementType.SELECT:
            name = str(stmt.type).rsplit(".", 1)[-1]
            raise SqlRefused(f"the SQL door is read-only: {name} statements are refused (only SELECT "
                             f"queries over the catalog's views run): {' '.join(text.split())[:80]}")


def query(root: str | Path, sql: str) -> pa.Table:
    """Refresh the catalog, then run ``sql`` on it read-only and return the result as Arrow.

    Only SELECT statements run, and DuckDB may read only the files the views list (its external
    access is off and locked), so COPY, ATTACH, CREATE, SET, INSTALL/LOAD and reads of other files
    fail (SqlRefused, or duckdb.PermissionException naming the file).
    """
    path = refresh_catalog(root)
    con = duckdb.connect(str(path), read_only=True)
    try:
        allowed = [r[0] for r in con.execute(f"SELECT path FROM {FILES_VIEW}").fetchall()]
        con.execute(f"SET allowed_paths = {_sql_list(allowed)}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        _check_read_only(con, sql)
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

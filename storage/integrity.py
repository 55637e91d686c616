"""Integrity records of an artifact's files, and the checks that compare a directory against them.

At publish, the manifest's ``files`` maps every file of the artifact (``<table>.parquet`` and
everything under ``files/``) to its size and SHA-256; ``rows`` gives each table's row count. Checks
come in two strengths:

- a *read check* (``Store.find``, the catalog): every recorded file exists with its recorded size,
  each table's Parquet footer reports the recorded row count, and files up to ``HASH_ON_READ_MAX``
  bytes are hashed too. A file's hash is computed once per process and cached by its identity
  (device, inode, size, mtime, ctime); a file modified less than ``_RACY_S`` seconds ago is never
  cached, so a change within one timestamp tick is not missed.
- a *full check* (``unisd store verify``, and a table that is read whole): every file is hashed,
  bypassing the cache for ``store verify``.

Manifests written before these records existed have no ``files`` entry: their row counts are still
checked against the Parquet footers, and they are reported as unverified rather than rejected, so
older stores stay usable (``--force`` rewrites an artifact with full records).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import SchemaError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HASH_ON_READ_MAX = 64 << 20
"""Files up to this many bytes (64 MiB) are hashed on every read check; bigger ones on a full check."""
_RACY_S = 2.0
_CHUNK = 1 << 20
_hash_cache: dict[tuple, str] = {}
_warned_unverified: set[str] = set()


class CorruptArtifact(SchemaError):
    """A stored artifact no longer matches its manifest (size, SHA-256 or row count)."""


def sha256_file(path: Path, *, cache: bool = True) -> str:
    """Hex SHA-256 of ``path``; with ``cache``, reuse this process's hash of the identical file."""
    st = os.stat(path)
    ident = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if cache and ident in _hash_cache:
        return _hash_cache[ident]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    if cache and time.time() - st.st_mtime > _RACY_S:
        _hash_cache[ident] = hexdigest
    return hexdigest


def file_records(artifact_dir: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {size, sha256} of every regular file under ``artifact_dir`` but the manifest."""
    records = {}
    for dirpath, dirnames, filenames in os.walk(artifact_dir):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(artifact_dir).as_posix()
            if rel == MANIFEST or path.is_symlink():
                continue
            records[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path, cache=False)}
    return records


def parquet_rows(path: Path) -> int:
    """Row count from the Parquet footer (reads only the footer)."""
    return pq.read_metadata(path).num_rows


def _check_file(path: Path, record: dict[str, Any], *, full: bool, cache: bool) -> str | None:
    """What is wrong with ``path`` against its record (missing, size, sha256), or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file is missing"
    if size != record.get("size"):
        return f"size is {size} bytes, the manifest records {record.get('size')}"
    if full or size <= HASH_ON_READ_MAX:
        try:
            digest = sha256_file(path, cache=cache)
        except OSError as e:
            return f"unreadable ({e.strerror or e})"
        if digest != record.get("sha256"):
            return f"sha256 is {digest[:16]}…, the manifest records {str(record.get('sha256'))[:16]}…"
    return None


def check_table(artifact_dir: Path, manifest: dict, table: str, *, full: bool = False,
                cache: bool = True) -> str | None:
    """What is wrong with ``<table>.parquet`` of an artifact (file record, footer row count), or None."""
    name = f"{table}.parquet"
    path = artifact_dir / name
    records = manifest.get("files")
    if isinstance(records, dict):
        if name not in records:
            return f"{name}: the manifest has no size/sha256 record for it"
        if (problem := _check_file(path, records[name], full=full, cache=cache)) is not None:
            return f"{name}: {problem}"
    elif not path.is_file():
        return f"{name}: file is missing"
    expected = manifest.get("rows", {}).get(table)
    try:
        rows = parquet_rows(path)
    except (pa.ArrowInvalid, OSError) as e:
        return f"{name}: unreadable Parquet ({' '.join(str(e).split())[:160]})"
    if expected != rows:
        return f"{name}: the file holds {rows} rows, the manifest records {expected}"
    return None


def check_artifact(artifact_dir: Path, manifest: dict, *, full: bool = False, cache: bool = True,
                   tables_only: bool = False) -> list[str]:
    """Every problem found in an artifact dir against its manifest (empty list: it is intact).

    ``full`` hashes every file (else only those up to ``HASH_ON_READ_MAX``); ``tables_only`` skips
    the extra files under ``files/``.
    """
    problems = [p for t in sorted(manifest.get("outputs", {}))
                if (p := check_table(artifact_dir, manifest, t, full=full, cache=cache)) is not None]
    records = manifest.get("files")
    if not isinstance(records, dict):
        _warn_unverified(artifact_dir)
        return problems
    if not tables_only:
        tables = {f"{t}.parquet" for t in manifest.get("outputs", {})}
        for rel, record in sorted(records.items()):
            if rel not in tables and (p := _check_file(artifact_dir / rel, record, full=full,
                                                       cache=cache)) is not None:
                problems.append(f"{rel}: {p}")
    return problems


def is_unverified(manifest: dict) -> bool:
    """True for a manifest written before file records existed (sizes and hashes cannot be checked)."""
    return not isinstance(manifest.get("files"), dict)


def _warn_unverified(artifact_dir: Path) -> None:
    if str(artifact_dir) not in _warned_unverified:
        _warned_unverified.add(str(artifact_dir))
        log.warning("artifact %s/%s records no file sizes or hashes (written by an older version): only its "
                    "row counts are checked; recompute it with --force to record them",
                    artifact_dir.parent.name, artifact_dir.name[:12])

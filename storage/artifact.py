"""A finished artifact (read side) and the workspace a stage computes in (write side).

An ``Artifact`` is a directory ``<root>/<stage>/<key>/`` with one Parquet file per output table,
optional extra files under ``files/`` and ``manifest.json``. Reading a table first checks the file
against the size, SHA-256 and row count the manifest records (``storage.integrity``), then against
the schema recorded there, so a tampered or truncated file fails loudly instead of feeding bad rows
to the next stage. A ``Workspace`` is the artifact's partial directory: it survives crashes
for the same key, so long stages save progress there and resume from it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from schemas import SchemaError, TableSchema

from .integrity import MANIFEST, CorruptArtifact, check_table

log = logging.getLogger(__name__)

FILES = "files"
PROGRESS = "progress"


def schema_record(ts: TableSchema) -> dict[str, Any]:
    """JSON-able description of ``ts`` stored in the manifest, enough to rebuild it."""
    return {
        "schema": ts.name,
        "fingerprint": ts.fingerprint(),
        "key": list(ts.key),
        "required": list(ts.required),
        "arrow": base64.b64encode(ts.schema.remove_metadata().serialize().to_pybytes()).decode(),
    }


def schema_from_record(rec: dict[str, Any]) -> TableSchema:
    """Inverse of ``schema_record``."""
    arrow = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(rec["arrow"])))
    return TableSchema(rec["schema"], arrow, required=tuple(rec["required"]), key=tuple(rec["key"]))


def read_manifest(path: Path, stage: str, key: str) -> dict | None:
    """The manifest of a finished artifact dir, or None if absent, unreadable or inconsistent."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring artifact %s: unreadable manifest (%s)", path, e)
        return None
    if not isinstance(manifest, dict) or manifest.get("stage") != stage or manifest.get("key") != key:
        log.warning("ignoring artifact %s: manifest names a different stage/key", path)
        return None
    return manifest


def write_parquet_atomic(table: pa.Table, path: Path, *, fsync: bool = False) -> None:
    """Write ``table`` to a hidden temp sibling, optionally fsync it, then ``os.replace`` it into ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        pq.write_table(table, tmp)
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """fsync a file or directory (directories: makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Artifact:
    """A finished, immutable artifact; tables are read lazily and validated on every read."""

    stage: str
    key: str
    path: Path
    manifest: dict = field(compare=False, repr=False)

    @property
    def table_names(self) -> list[str]:
        """Names of the output tables this artifact holds."""
        return sorted(self.manifest.get("outputs", {}))

    def schema(self, name: str) -> TableSchema:
        """The schema ``name`` was written with; SchemaError if the code's schema has since changed."""
        outputs = self.manifest.get("outputs", {})
        if name not in outputs:
            raise KeyError(f"artifact {self.stage}/{self.key[:12]} has no table {name!r} "
                           f"(has: {', '.join(sorted(outputs)) or 'none'})")
        ts = schema_from_record(outputs[name])
        current = schemas.ALL.get(ts.name)
        if current is not None and current.fingerprint() != outputs[name]["fingerprint"]:
            raise SchemaError(f"table {name} in {self.stage}/{self.key[:12]} was written with schema "
                              f"{outputs[name]['fingerprint']}, the code now defines "
                              f"{current.fingerprint()}; rerun stage {self.stage}")
        return current if current is not None else ts

    def table(self, name: str) -> pa.Table:
        """Read ``<path>/<name>.parquet`` after checking its size, SHA-256 and row count against the
        manifest (CorruptArtifact), and validate it against its schema (SchemaError on mismatch)."""
        ts = self.schema(name)
        path = self.path / f"{name}.parquet"
        problem = check_table(self.path, self.manifest, name, full=True)
        if problem is not None and (current := self.republished()) is not None:
            problem = check_table(self.path, current, name, full=True)
        if problem is not None:
            raise CorruptArtifact(f"artifact {self.stage}/{self.key[:12]} is corrupt: {problem}; "
                                  "rerun to quarantine and recompute it")
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            raise SchemaError(f"table {name}: file {path} is missing") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise SchemaError(f"table {name}: cannot read {path}: {e}") from None
        table = table.replace_schema_metadata(None)
        schemas.validate(table, ts)
        return table

    def republished(self) -> dict | None:
        """The manifest on disk if the artifact was published again under this key (a forced recompute)
        since this object was made, else None."""
        current = read_manifest(self.path, self.stage, self.key)
        return current if current is not None and current != self.manifest else None

    def file(self, rel: str) -> Path:
        """Path of an extra file or directory saved under ``files/`` (FileNotFoundError if absent)."""
        base = (self.path / FILES).resolve()
        target = (base / rel).resolve()
        if target != base and base not in target.parents:
            raise ValueError(f"artifact file {rel!r} escapes {base}")
        if not target.exists():
            raise FileNotFoundError(f"artifact {self.stage}/{self.key[:12]} has no file {rel!r} in {base}")
        return target


@dataclass(frozen=True)
class Workspace:
    """The partial directory handed to a stage's compute function; it persists across crashes."""

    dir: Path
    files: Path
    """Extra files written here become ``files/`` of the finished artifact."""

    @classmethod
    def create(cls, dir: Path) -> Workspace:
        (dir / FILES).mkdir(parents=True, exist_ok=True)
        return cls(dir=dir, files=dir / FILES)

    def save_progress(self, name: str, table: pa.Table) -> None:
        """Atomically write ``progress/<name>.parquet`` (a chunk of work the next attempt can skip)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"progress name {name!r} must be a plain file name not starting with '.'")
        progress = self.dir / PROGRESS
        progress.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, progress / f"{name}.parquet")

    def load_progress(self, pattern: str = "*") -> list[pa.Table]:
        """Chunks saved by earlier attempts whose name matches ``pattern``, sorted by name."""
        progress = self.dir / PROGRESS
        if not progress.is_dir():
            return []
        paths = sorted(p for p in progress.glob(f"{pattern}.parquet") if not p.name.startswith("."))
        return [pq.read_table(p).replace_schema_metadata(None) for p in paths]


"""Content-addressed artifact store: ``<root>/<stage>/<key>/`` written atomically, reused by key.

Write protocol (why each step exists):
1. Fast path: a finished artifact with a valid manifest is returned as is (cache hit).
2. Take ``fcntl.flock`` on ``<stage>/.lock-<key>`` so concurrent runs of the same key compute once,
   then re-check for a finished artifact that another process may have just published.
3. Compute inside ``<stage>/.partial-<key>/``, which survives crashes so long stages resume.
4. Conform every output to its schema *before* writing anything, write Parquet + ``files/`` +
   manifest (last) into a fresh ``<stage>/.tmp-<key>-<uuid>/``, fsync, and ``os.rename`` it to the
   final path. A reader therefore sees either no artifact or a complete, schema-valid one.
5. Delete the partial dir, release the lock, refresh the DuckDB catalog (best effort).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from schemas import SchemaError

from . import catalog
from .artifact import FILES, MANIFEST, Artifact, Workspace, fsync_path, schema_record
from .keys import KEY_RE, NAME_RE, StageSpec, artifact_key, canonical_json
from .locking import file_lock, try_file_lock

log = logging.getLogger(__name__)

Compute = Callable[[Workspace], Mapping[str, pa.Table]]
_WORK_RE = re.compile(r"^\.(partial|tmp|old|lock)-([0-9a-f]{64})(-[0-9a-f]+)?$")
_CATALOG_TMP_MAX_AGE = 3600.0


@functools.lru_cache(maxsize=1)
def _package_version() -> str:
    try:
        return importlib.metadata.version("unisd")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@functools.lru_cache(maxsize=1)
def _git_sha() -> str | None:
    """HEAD of the repository holding this package, if git answers within a second."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, check=False,
                             capture_output=True, text=True, timeout=1)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link (instant, and the partial dir keeps its copy until publish succeeds) or copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _conform_outputs(spec: StageSpec, outputs: Any) -> dict[str, pa.Table]:
    if not isinstance(outputs, Mapping):
        raise TypeError(f"stage {spec.name}: compute must return a mapping of table name -> table, "
                        f"got {type(outputs).__name__}")
    missing = sorted(set(spec.outputs) - set(outputs))
    extra = sorted(set(outputs) - set(spec.outputs))
    if missing or extra:
        raise SchemaError(f"stage {spec.name}: compute returned tables {sorted(outputs)}, "
                          f"spec expects {sorted(spec.outputs)} (missing {missing}, unexpected {extra})")
    return {name: schemas.conform(outputs[name], spec.outputs[name]) for name in spec.outputs}


def _read_manifest(path: Path, stage: str, key: str) -> dict | None:
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
    missing = [t for t in manifest.get("outputs", {}) if not (path / f"{t}.parquet").is_file()]
    if missing:
        log.warning("ignoring artifact %s: missing table file(s) %s", path, missing)
        return None
    return manifest


def _remove_dir(path: Path) -> None:
    """Remove a directory; a finished artifact is first renamed aside so it vanishes atomically."""
    if not path.name.startswith("."):
        aside = path.with_name(f".old-{path.name}-{uuid.uuid4().hex[:8]}")
        os.rename(path, aside)
        path = aside
    shutil.rmtree(path, ignore_errors=True)


class Store:
    """Artifacts under ``root``; see the module docstring for the write protocol."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def _stage_dir(self, stage: str) -> Path:
        if not NAME_RE.match(stage):
            raise ValueError(f"stage name {stage!r} must match {NAME_RE.pattern}")
        return self.root / stage

    def key_for(self, spec: StageSpec, config: Any, inputs: Mapping[str, Artifact]) -> str:
        """The artifact key ``materialize`` would use for these arguments."""
        return artifact_key(spec, config, {name: art.key for name, art in inputs.items()})

    def find(self, stage: str, key: str) -> Artifact | None:
        """The finished artifact ``stage``/``key``, or None."""
        if not KEY_RE.match(key):
            raise ValueError(f"artifact key {key!r} must be 64 lowercase hex characters")
        path = self._stage_dir(stage) / key
        manifest = _read_manifest(path, stage, key) if path.is_dir() else None
        return None if manifest is None else Artifact(stage, key, path, manifest)

    def get(self, stage: str, key: str) -> Artifact:
        """Like ``find`` but raises KeyError when the artifact does not exist."""
        art = self.find(stage, key)
        if art is None:
            raise KeyError(f"no finished artifact {stage}/{key} in {self.root}")
        return art

    def list(self, stage: str | None = None) -> list[Artifact]:
        """Finished artifacts (of one stage, or all), ordered by stage then finish time."""
        stages = [stage] if stage is not None else sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.match(p.name))
        arts = []
        for s in stages:
            sdir = self._stage_dir(s)
            if sdir.is_dir():
                arts += [a for p in sorted(sdir.iterdir()) if KEY_RE.match(p.name)
                         for a in [self.find(s, p.name)] if a is not None]
        return sorted(arts, key=lambda a: (a.stage, a.manifest.get("timings", {}).get("finished", "")))

    def materialize(self, spec: StageSpec, config: Any, inputs: Mapping[str, Artifact], compute: Compute,
                    *, force: bool = False, extra_manifest: Mapping | None = None) -> Artifact:
        """Return the artifact for (spec, config, inputs), computing and publishing it if needed."""
        key = self.key_for(spec, config, inputs)
        if not force and (art := self.find(spec.name, key)) is not None:
            log.info("stage %s: reusing artifact %s", spec.name, key[:12])
            return art
        sdir = self._stage_dir(spec.name)
        sdir.mkdir(parents=True, exist_ok=True)
        with file_lock(sdir / f".lock-{key}"):
            if not force and (art := self.find(spec.name, key)) is not None:
                log.info("stage %s: artifact %s was written by another run", spec.name, key[:12])
                return art
            meta = {
                "stage": spec.name, "version": spec.version, "key": key,
                "config": json.loads(canonical_json(config)),
                "inputs": {name: a.key for name, a in sorted(inputs.items())},
                "extra": json.loads(canonical_json(dict(extra_manifest or {}))),
            }
            art = self._compute_and_publish(spec, key, meta, compute)
        self._refresh_catalog()
        return art

    def _compute_and_publish(self, spec: StageSpec, key: str, meta: dict, compute: Compute) -> Artifact:
        sdir = self.root / spec.name
        partial = sdir / f".partial-{key}"
        resumed = partial.exists()
        ws = Workspace.create(partial)
        log.info("stage %s: computing %s%s", spec.name, key[:12], " (resuming)" if resumed else "")
        started, t0 = _now(), time.perf_counter()
        tables = _conform_outputs(spec, compute(ws))
        seconds = round(time.perf_counter() - t0, 3)
        meta |= {
            "rows": {name: t.num_rows for name, t in tables.items()},
            "outputs": {name: schema_record(ts) for name, ts in spec.outputs.items()},
            "timings": {"started": started, "finished": _now(), "seconds": seconds},
            "package_version": _package_version(), "host": socket.gethostname(),
            "python": platform.python_version(), "git_sha": _git_sha(),
        }
        tmp = sdir / f".tmp-{key}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for name, table in tables.items():
                pq.write_table(table, tmp / f"{name}.parquet")
                fsync_path(tmp / f"{name}.parquet")
            if any(ws.files.iterdir()):
                shutil.copytree(ws.files, tmp / FILES, symlinks=True, copy_function=_link_or_copy)
            (tmp / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            fsync_path(tmp / MANIFEST)
            fsync_path(tmp)
            _publish(tmp, sdir / key)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(partial, ignore_errors=True)
        log.info("stage %s: wrote %s (%s) in %.1fs", spec.name, key[:12],
                 ", ".join(f"{n}={r}" for n, r in meta["rows"].items()), meta["timings"]["seconds"])
        return Artifact(spec.name, key, sdir / key, meta)

    def _refresh_catalog(self) -> None:
        try:
            catalog.refresh_catalog(self.root)
        except Exception as e:  # noqa: BLE001 - the catalog is derived data; never fail a write for it
            log.warning("could not refresh the DuckDB catalog in %s: %s", self.root, e)

    def query(self, sql: str) -> pa.Table:
        """Run SQL against the catalog views of this store (see ``storage.catalog.query``)."""
        return catalog.query(self.root, sql)

    def gc(self, *, dry_run: bool = False, keep: set[str] | None = None,
           remove_unkept: bool = False) -> list[Path]:
        """Remove stale partial/tmp dirs whose lock is free; with ``remove_unkept`` also finished
        artifacts whose key is not in ``keep``. Returns what was (or, dry run, would be) removed."""
        if remove_unkept and keep is None:
            raise ValueError("gc(remove_unkept=True) needs keep=<set of artifact keys to keep>")
        removed: list[Path] = []
        removed_final = False
        for sdir in sorted(p for p in self.root.iterdir() if p.is_dir() and NAME_RE.match(p.name)):
            for key, paths in self._gc_candidates(sdir, keep if remove_unkept else None).items():
                with try_file_lock(sdir / f".lock-{key}") as held:
                    if not held:
                        log.info("gc: skipping %s/%s, a run holds its lock", sdir.name, key[:12])
                        continue
                    for path in paths:
                        removed.append(path)
                        removed_final |= not path.name.startswith(".")
                        if not dry_run and path.is_dir():
                            _remove_dir(path)
                        elif not dry_run:
                            path.unlink(missing_ok=True)
        removed += self._gc_catalog_temps(dry_run)
        if removed_final and not dry_run:
            self._refresh_catalog()
        return removed

    def _gc_candidates(self, sdir: Path, keep: set[str] | None) -> dict[str, list[Path]]:
        """Key -> paths to remove in one stage dir (work dirs, stale lock files, unkept artifacts)."""
        out: dict[str, list[Path]] = {}
        for p in sorted(sdir.iterdir()):
            if (m := _WORK_RE.match(p.name)) is not None:
                out.setdefault(m[2], []).append(p)
            elif keep is not None and KEY_RE.match(p.name) and p.name not in keep:
                out.setdefault(p.name, []).append(p)
        return out

    def _gc_catalog_temps(self, dry_run: bool) -> list[Path]:
        """Catalog temp files left by a killed refresh (older than an hour, so never a live one)."""
        old = [p for p in self.root.glob(".catalog-*")
               if time.time() - p.stat().st_mtime > _CATALOG_TMP_MAX_AGE]
        if not dry_run:
            for p in old:
                p.unlink(missing_ok=True)
        return old


def _publish(tmp: Path, final: Path) -> None:
    """Rename a complete tmp dir to its final path, replacing (after moving it aside) any old one."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

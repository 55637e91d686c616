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

Integrity: the manifest records every file's size and SHA-256 and every table's row count
(``storage.integrity``). ``find`` (so every cache hit and every input a stage reads) checks them; an
artifact that fails is moved to ``<stage>/.quarantine-<key>-<time>/`` (out of ``find`` and the
catalog, kept for inspection until ``gc``) and is recomputed by the next run. ``materialize`` checks
its inputs before computing, so a ``force`` recompute never reads a corrupt input.
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
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from schemas import SchemaError

from . import catalog
from .artifact import FILES, MANIFEST, Artifact, Workspace, fsync_path, read_manifest, schema_record
from .attempts import AttemptClock
from .integrity import CorruptArtifact, check_artifact, file_records, is_unverified
from .keys import KEY_RE, NAME_RE, StageSpec, artifact_key, canonical_json
from .locking import file_lock, try_file_lock

log = logging.getLogger(__name__)

Compute = Callable[[Workspace], Mapping[str, pa.Table]]
_WORK_RE = re.compile(r"^\.(partial|tmp|old|lock|quarantine)-([0-9a-f]{64})(-[0-9A-Za-z]+)*$")
_CATALOG_TMP_RE = re.compile(r"^\.catalog-([0-9a-f]{32})\.")


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


def _load_manifest(path: Path, stage: str, key: str) -> dict | None:
    """The manifest of a finished artifact dir whose table files all exist, else None."""
    manifest = read_manifest(path, stage, key) if path.is_dir() else None
    if manifest is None:
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
        """The finished, intact artifact ``stage``/``key``, or None.

        The artifact's files are checked against its manifest (``storage.integrity`` read check); a
        corrupt one is quarantined (under its key's lock) and None is returned, so it is recomputed.
        """
        if not KEY_RE.match(key):
            raise ValueError(f"artifact key {key!r} must be 64 lowercase hex characters")
        art, problems = self._inspect(stage, key)
        if not problems:
            return art
        with file_lock(self._stage_dir(stage) / f".lock-{key}"):
            return self._find_locked(stage, key)

    def _inspect(self, stage: str, key: str) -> tuple[Artifact | None, list[str]]:
        """The artifact dir ``stage``/``key`` (None if it has no readable manifest) and its problems."""
        path = self._stage_dir(stage) / key
        manifest = read_manifest(path, stage, key) if path.is_dir() else None
        if manifest is None:
            return None, []
        return Artifact(stage, key, path, manifest), check_artifact(path, manifest)

    def _find_locked(self, stage: str, key: str) -> Artifact | None:
        """``find`` for a caller that holds the key's lock: re-check, quarantine if still corrupt."""
        art, problems = self._inspect(stage, key)
        if art is None or not problems:
            return art
        self._quarantine(art, problems)
        return None

    def _quarantine(self, art: Artifact, problems: list[str]) -> Path:
        """Move a corrupt artifact aside (caller holds its lock) and drop it from the catalog."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = art.path.with_name(f".quarantine-{art.key}-{stamp}")
        os.rename(art.path, aside)
        (aside / "QUARANTINED.txt").write_text("\n".join(problems) + "\n")
        log.warning("stage %s: artifact %s is corrupt (%s); quarantined to %s, it will be recomputed",
                    art.stage, art.key[:12], "; ".join(problems), aside)
        self._refresh_catalog()
        return aside

    def get(self, stage: str, key: str) -> Artifact:
        """Like ``find`` but raises KeyError when the artifact does not exist (or was corrupt)."""
        art = self.find(stage, key)
        if art is None:
            raise KeyError(f"no finished artifact {stage}/{key} in {self.root}")
        return art

    def _stages(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.match(p.name))

    def list(self, stage: str | None = None) -> list[Artifact]:
        """Finished artifacts (of one stage, or all), ordered by stage then finish time.

        Listing reads manifests only; ``verify`` checks the files."""
        arts = []
        for s in [stage] if stage is not None else self._stages():
            sdir = self._stage_dir(s)
            if sdir.is_dir():
                arts += [Artifact(s, p.name, p, m) for p in sorted(sdir.iterdir()) if KEY_RE.match(p.name)
                         for m in [_load_manifest(p, s, p.name)] if m is not None]
        return sorted(arts, key=lambda a: (a.stage, a.manifest.get("timings", {}).get("finished", "")))

    def verify(self, *, stage: str | None = None, quarantine: bool = True) -> list[tuple[str, str, str]]:
        """Fully check every artifact (every file hashed); returns (stage, key, verdict) per artifact:
        ``ok``, ``corrupt: …`` (quarantined unless ``quarantine`` is False or a run holds its lock) or
        ``unverified: …`` (an older manifest without file records: its row counts were checked)."""
        out = []
        for s in [stage] if stage is not None else self._stages():
            sdir = self._stage_dir(s)
            for path in sorted(p for p in sdir.iterdir() if KEY_RE.match(p.name)) if sdir.is_dir() else []:
                manifest = read_manifest(path, s, path.name)
                if manifest is None and not path.exists():
                    continue  # removed (gc, or replaced by a run) since it was listed
                problems = (["manifest.json is missing or unreadable"] if manifest is None else
                            check_artifact(path, manifest, full=True, cache=False))
                if not problems:
                    out.append((s, path.name, "unverified: the manifest records no file sizes or hashes"
                                if manifest is not None and is_unverified(manifest) else "ok"))
                    continue
                verdict = "corrupt: " + "; ".join(problems)
                if quarantine:
                    verdict += self._verify_quarantine(Artifact(s, path.name, path, manifest or {}), problems)
                out.append((s, path.name, verdict))
        return out

    def _verify_quarantine(self, art: Artifact, problems: list[str]) -> str:
        with try_file_lock(art.path.parent / f".lock-{art.key}") as held:
            if not held:
                return " (a run holds its lock: not quarantined)"
            manifest = read_manifest(art.path, art.stage, art.key)  # a run may have just replaced it
            if not art.path.is_dir():
                return " (since removed)"
            if manifest is not None and not check_artifact(art.path, manifest, full=True, cache=False):
                return " (since replaced by an intact artifact)"
            return f" (quarantined to {self._quarantine(art, problems)})"

    def _check_inputs(self, stage: str, inputs: Mapping[str, Artifact]) -> None:
        """Raise CorruptArtifact if an input no longer matches its manifest, quarantining it first."""
        for name, art in sorted(inputs.items()):
            problems = check_artifact(art.path, art.manifest)
            if not problems or ((current := art.republished()) is not None
                                and not check_artifact(art.path, current)):
                continue  # intact, or published again (intact) under its key since `art` was made
            if art.path == self._stage_dir(art.stage) / art.key:
                with try_file_lock(art.path.parent / f".lock-{art.key}") as held:
                    if held:
                        self._find_locked(art.stage, art.key)
            raise CorruptArtifact(f"stage {stage}: input {name} ({art.stage}/{art.key[:12]}) is corrupt: "
                                  f"{'; '.join(problems)}; rerun to recompute it")

    def materialize(self, spec: StageSpec, config: Any, inputs: Mapping[str, Artifact], compute: Compute,
                    *, force: bool = False, extra_manifest: Mapping | None = None) -> Artifact:
        """Return the artifact for (spec, config, inputs), computing and publishing it if needed.

        Before computing, every input is checked against its manifest (CorruptArtifact if one fails)."""
        key = self.key_for(spec, config, inputs)
        if not force and (art := self.find(spec.name, key)) is not None:
            log.info("stage %s: reusing artifact %s", spec.name, key[:12])
            return art
        sdir = self._stage_dir(spec.name)
        sdir.mkdir(parents=True, exist_ok=True)
        with file_lock(sdir / f".lock-{key}"):
            if not force and (art := self._find_locked(spec.name, key)) is not None:
                log.info("stage %s: artifact %s was written by another run", spec.name, key[:12])
                return art
            self._check_inputs(spec.name, inputs)
            meta = {
                "stage": spec.name, "version": spec.version, "key": key,
                "config": json.loads(canonical_json(config)),
                "inputs": {name: a.key for name, a in sorted(inputs.items())},
                "extra": json.loads(canonical_json(dict(extra_manifest or {}))),
            }
            art = self._compute_and_publish(spec, key, meta, compute)
        self._refresh_catalog()
        return art

    def partial_dir(self, stage: str, key: str) -> Path:
        """The resumable workspace directory of artifact ``stage``/``key`` while it is being computed."""
        return self._stage_dir(stage) / f".partial-{key}"

    def _compute_and_publish(self, spec: StageSpec, key: str, meta: dict, compute: Compute) -> Artifact:
        sdir = self.root / spec.name
        partial = self.partial_dir(spec.name, key)
        resumed = partial.exists()
        ws = Workspace.create(partial)
        log.info("stage %s: computing %s%s", spec.name, key[:12], " (resuming)" if resumed else "")
        started, clock = _now(), AttemptClock(partial)
        try:
            tables = _conform_outputs(spec, compute(ws))
        except BaseException:
            clock.stop()  # this attempt's time stays in the partial dir for the one that finishes
            raise
        timing = clock.finish()
        meta |= {
            "rows": {name: t.num_rows for name, t in tables.items()},
            "outputs": {name: schema_record(ts) for name, ts in spec.outputs.items()},
            "timings": {"started": started, "finished": _now(), **timing},
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
            meta["files"] = file_records(tmp)
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
        """Catalog temp files (``.catalog-<id>.*``) whose refresh is gone, i.e. its lock is free."""
        groups: dict[str, list[Path]] = {}
        for p in sorted(self.root.iterdir()):
            if (m := _CATALOG_TMP_RE.match(p.name)) is not None:
                groups.setdefault(m[1], []).append(p)
        stale = []
        for ident, paths in groups.items():
            with try_file_lock(catalog.refresh_lock(self.root, ident)) as held:
                if not held:
                    continue  # a live refresh is building this file
                stale += paths
                if not dry_run:
                    for p in paths:
                        p.unlink(missing_ok=True)
        return stale


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

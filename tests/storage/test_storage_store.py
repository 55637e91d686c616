"""Store: layout and manifest, cache hits, force, atomicity, resume, schema checks, gc."""

from __future__ import annotations

import fcntl
import json
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from schemas import SchemaError
from storage import StageSpec, Store, Workspace
from storage.integrity import CorruptArtifact


def _hidden(store: Store, stage: str = "evaluate") -> list[str]:
    sdir = store.root / stage
    return sorted(p.name for p in sdir.iterdir() if p.name.startswith(".")) if sdir.exists() else []


def test_materialize_writes_layout_and_manifest(store, spec, counting):
    def compute(ws: Workspace):
        (ws.files / "checkpoint").mkdir()
        (ws.files / "checkpoint" / "w.bin").write_bytes(b"\x00\x01")
        return counting()(ws)

    examples = store.materialize(StageSpec("ingest", 1, {}, {"examples": schemas.EXAMPLES}),
                                 {"source": "bundled"}, {}, lambda ws: {"examples": []})
    art = store.materialize(spec, {"num_samples": 2}, {"examples": examples}, compute,
                            extra_manifest={"model_revision": "abc"})
    assert art.path == store.root / "evaluate" / art.key and len(art.key) == 64
    assert sorted(p.name for p in art.path.iterdir()) == ["files", "manifest.json", "scores.parquet"]
    m = json.loads((art.path / "manifest.json").read_text())
    assert m == art.manifest
    assert (m["stage"], m["version"], m["key"]) == ("evaluate", 1, art.key)
    assert m["config"] == {"num_samples": 2} and m["inputs"] == {"examples": examples.key}
    assert m["rows"] == {"scores": 2} and m["extra"] == {"model_revision": "abc"}
    assert set(m["timings"]) == {"started", "finished", "seconds", "last_attempt_seconds", "attempts", "peak_rss_mb",
                                 "peak_rss_scope"} and m["timings"]["seconds"] >= 0 and m["timings"]["attempts"] == 1
    assert m["package_version"] and m["host"] and m["python"]
    assert art.table("scores").equals(counting().table)
    assert art.file("checkpoint/w.bin").read_bytes() == b"\x00\x01"
    assert art.file("checkpoint").is_dir()
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        art.file("index.faiss")
    with pytest.raises(ValueError, match="escapes"):
        art.file("../manifest.json")
    assert store.key_for(spec, {"num_samples": 2}, {"examples": examples}) == art.key
    assert examples.table("examples").num_rows == 0 and not (examples.path / "files").exists()
    assert _hidden(store) == [] and _hidden(store, "ingest") == []


def test_cache_hit_does_not_call_compute(store, spec, counting, caplog):
    compute = counting()
    first = store.materialize(spec, {"a": 1}, {}, compute)
    with caplog.at_level(logging.INFO, logger="storage"):
        second = store.materialize(spec, {"a": 1}, {}, compute)
    assert compute.calls == 1 and second == first
    assert "reusing artifact" in caplog.text
    assert store.get("evaluate", first.key) == first
    store.materialize(spec, {"a": 2}, {}, compute)
    assert compute.calls == 2


def test_force_recomputes_and_replaces(store, spec, counting, make_scores):
    compute = counting()
    first = store.materialize(spec, {"a": 1}, {}, compute)
    compute.table = make_scores(3)
    again = store.materialize(spec, {"a": 1}, {}, compute, force=True)
    assert compute.calls == 2 and again.key == first.key
    assert store.get("evaluate", first.key).table("scores").num_rows == 3
    assert again.manifest["timings"]["started"] >= first.manifest["timings"]["started"]
    assert _hidden(store) == []


def test_compute_error_leaves_no_artifact_but_keeps_partial(store, spec):
    def boom(ws: Workspace):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        store.materialize(spec, {"a": 1}, {}, boom)
    key = store.key_for(spec, {"a": 1}, {})
    assert store.find("evaluate", key) is None and store.list() == []
    assert not (store.root / "evaluate" / key).exists()
    assert _hidden(store) == [f".partial-{key}"]
    with pytest.raises(KeyError, match="no finished artifact"):
        store.get("evaluate", key)


def test_progress_survives_failure_and_is_resumed(store, spec, make_scores):
    seen: list[list[int]] = []

    def compute(ws: Workspace):
        done = ws.load_progress("chunk-*")
        seen.append([t.num_rows for t in done])
        for i in range(len(done), 3):
            ws.save_progress(f"chunk-{i}", make_scores(i + 1, dataset=f"d{i}"))
            if i == 1 and len(seen) == 1:
                raise KeyboardInterrupt  # killed mid-run after two chunks
        return {"scores": pa.concat_tables(ws.load_progress("chunk-*"))}

    with pytest.raises(KeyboardInterrupt):
        store.materialize(spec, {"a": 1}, {}, compute)
    art = store.materialize(spec, {"a": 1}, {}, compute)
    assert seen == [[], [1, 2]]
    assert art.table("scores").num_rows == 1 + 2 + 3
    assert _hidden(store) == []  # partial dir removed once published


def test_load_progress_sorted_and_ignores_temp_files(tmp_path, make_scores):
    ws = Workspace.create(tmp_path / "ws")
    ws.save_progress("b", make_scores(2))
    ws.save_progress("a", make_scores(1))
    ws.save_progress("a", make_scores(3))  # overwrite is atomic
    (ws.dir / "progress" / ".c.parquet.tmp-123").write_bytes(b"half written")
    (ws.dir / "progress" / ".d.parquet").write_bytes(b"half written")
    assert [t.num_rows for t in ws.load_progress()] == [3, 2]
    assert [t.num_rows for t in ws.load_progress("b")] == [2]
    with pytest.raises(ValueError, match="progress name"):
        ws.save_progress("../x", make_scores(1))


@pytest.mark.parametrize("outputs, match", [
    ({"scores": pa.table({"dataset": ["d"]})}, "missing column"),
    ({"scores": [{"dataset": "d", "model": "m", "method": "x", "metric": "acc", "value": 1.0,
                  "n": 1, "bogus": 1}]}, "unknown"),
    ({"scores": pa.table({"dataset": ["d", "d"], "model": ["m", "m"], "method": ["x", "x"],
                          "metric": ["acc", "acc"], "value": [1.0, 2.0], "n": [1, 1]})}, "duplicate key"),
    ({}, "missing \\['scores'\\]"),
    ({"scores": [], "predictions": []}, "unexpected \\['predictions'\\]"),
])
def test_bad_outputs_raise_schema_error_and_write_nothing(store, spec, outputs, match):
    with pytest.raises(SchemaError, match=match):
        store.materialize(spec, {"a": 1}, {}, lambda ws: outputs)
    key = store.key_for(spec, {"a": 1}, {})
    assert store.list() == [] and _hidden(store) == [f".partial-{key}"]


def test_tampered_parquet_fails_on_read(store, spec, counting, make_scores):
    art = store.materialize(spec, {"a": 1}, {}, counting())
    path = art.path / "scores.parquet"
    pq.write_table(make_scores(2).drop_columns(["n"]), path)
    with pytest.raises(CorruptArtifact, match="scores.parquet: size is"):
        art.table("scores")
    assert store.find("evaluate", art.key) is None  # quarantined
    with pytest.raises(KeyError, match="predictions"):
        art.table("predictions")


def _without_records(art) -> None:
    """Make ``art`` look like an artifact written before manifests recorded sizes and hashes."""
    del art.manifest["files"]
    (art.path / "manifest.json").write_text(json.dumps(art.manifest))


def test_schema_is_checked_on_read_even_without_file_records(store, spec, counting, make_scores):
    art = store.materialize(spec, {"a": 1}, {}, counting())
    _without_records(art)
    path = art.path / "scores.parquet"
    pq.write_table(make_scores(2).drop_columns(["n"]), path)
    with pytest.raises(SchemaError, match="schema mismatch"):
        store.get("evaluate", art.key).table("scores")
    pq.write_table(make_scores(2).set_column(5, "n", pa.array([1.5, 2.5])), path)
    with pytest.raises(SchemaError, match="schema mismatch"):
        art.table("scores")
    pq.write_table(make_scores(3), path)
    with pytest.raises(CorruptArtifact, match="holds 3 rows, the manifest records 2"):
        art.table("scores")
    path.write_bytes(b"not parquet")
    with pytest.raises(CorruptArtifact, match="unreadable Parquet"):
        art.table("scores")


def test_schema_change_since_write_is_reported(store, spec, counting):
    art = store.materialize(spec, {"a": 1}, {}, counting())
    art.manifest["outputs"]["scores"]["fingerprint"] = "0" * 16
    with pytest.raises(SchemaError, match="rerun stage evaluate"):
        art.table("scores")


def test_table_not_in_schemas_all_is_checked_against_manifest(store):
    custom = schemas.TableSchema("custom", pa.schema([pa.field("x", pa.int64(), nullable=False)]), key=("x",))
    art = store.materialize(StageSpec("analyze", 1, {}, {"custom": custom}), {}, {},
                            lambda ws: {"custom": pa.table({"x": [1, 2]})})
    assert art.table("custom").column("x").to_pylist() == [1, 2]
    _without_records(art)
    pq.write_table(pa.table({"x": [1, 1]}), art.path / "custom.parquet")
    with pytest.raises(SchemaError, match="schema mismatch"):
        art.table("custom")


def test_corrupt_manifest_is_not_a_cache_hit(store, spec, counting):
    compute = counting()
    art = store.materialize(spec, {"a": 1}, {}, compute)
    (art.path / "manifest.json").write_text("{truncated")
    assert store.find("evaluate", art.key) is None
    again = store.materialize(spec, {"a": 1}, {}, compute)
    assert compute.calls == 2 and again.table("scores").num_rows == 2


def test_list_and_find_validation(store, spec, counting):
    a = store.materialize(spec, {"a": 1}, {}, counting())
    b = store.materialize(spec, {"a": 2}, {}, counting())
    ing = store.materialize(StageSpec("ingest", 1, {}, {"examples": schemas.EXAMPLES}), {}, {},
                            lambda ws: {"examples": []})
    assert store.list("evaluate") == [a, b]
    assert store.list() == [a, b, ing]
    assert store.list("train") == []
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.find("evaluate", "../x")
    with pytest.raises(ValueError, match="stage name"):
        store.find("../evaluate", a.key)


def _fail(store: Store, spec: StageSpec, config: dict) -> str:
    def boom(ws: Workspace):
        ws.save_progress("chunk-0", pa.table({"x": [1]}))
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        store.materialize(spec, config, {}, boom)
    return store.key_for(spec, config, {})


def test_gc_removes_stale_partials_but_not_locked_ones(store, spec, counting):
    done = store.materialize(spec, {"done": 1}, {}, counting())
    stale, busy = _fail(store, spec, {"a": 1}), _fail(store, spec, {"a": 2})
    sdir = store.root / "evaluate"
    fd = os.open(sdir / f".lock-{busy}", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a live run holds this key
        assert store.gc(dry_run=True) == [sdir / f".partial-{stale}"]
        assert (sdir / f".partial-{stale}").exists()
        assert store.gc() == [sdir / f".partial-{stale}"]
        assert not (sdir / f".partial-{stale}").exists() and (sdir / f".partial-{busy}").exists()
    finally:
        os.close(fd)
    assert store.gc() == [sdir / f".lock-{busy}", sdir / f".partial-{busy}"]
    assert _hidden(store) == [] and store.list() == [done]


def test_gc_remove_unkept(store, spec, counting):
    keep = store.materialize(spec, {"a": 1}, {}, counting())
    drop = store.materialize(spec, {"a": 2}, {}, counting())
    with pytest.raises(ValueError, match="keep="):
        store.gc(remove_unkept=True)
    assert store.gc(keep={keep.key}) == []
    assert store.gc(keep={keep.key}, remove_unkept=True, dry_run=True) == [drop.path]
    assert store.list() == [keep, drop]
    assert store.gc(keep={keep.key}, remove_unkept=True) == [drop.path]
    assert store.list() == [keep] and _hidden(store) == []
    assert store.query("select count(*) as n from scores").column("n").to_pylist() == [2]

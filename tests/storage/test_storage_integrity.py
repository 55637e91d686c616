"""Store integrity on a real store holding every table kind: flipped bytes, size and manifest edits are
detected, quarantined and recomputed; inputs are checked before a (forced) compute; verify checks all."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from storage import StageSpec, Store, Workspace
from storage.integrity import CorruptArtifact

STAGES = {  # stage -> the tables it writes (every schema of the project is stored by one stage)
    "ingest": ["examples"], "evaluate": ["predictions", "scores"], "analyze": ["retention"],
    "compare": ["comparisons"], "negatives": ["negatives"], "retrieval": ["neighbors"],
    "induction": ["instructions"], "contexts": ["contexts"], "train": ["rollouts", "train_steps"],
    "signals": ["signals"],
}
EXTRA_FILES = {"retrieval": "index.faiss", "train": "checkpoint/adapter.bin"}


def _value(typ: pa.DataType, name: str, i: int):
    if pa.types.is_string(typ):
        return f"{name}-{i}"
    if pa.types.is_boolean(typ):
        return i % 2 == 0
    if pa.types.is_integer(typ):
        return i
    if pa.types.is_floating(typ):
        return 0.25 + i
    if pa.types.is_map(typ):
        return [("loss", 1.0 + i)]
    if pa.types.is_list(typ):
        return [f"{name}-{i}"]
    raise AssertionError(f"no sample value for {typ}")


def sample_table(ts: schemas.TableSchema, n: int = 3) -> pa.Table:
    """``n`` rows of ``ts`` with distinct keys; enough for the store, which only stores and checks them."""
    rows = [{f.name: _value(f.type, f.name, i) for f in ts.schema} for i in range(n)]
    return schemas.conform(rows, ts)


class Stages:
    """Materialises one artifact per stage in STAGES, counting computes per stage."""

    def __init__(self, store: Store) -> None:
        self.store, self.calls = store, Counter()

    def spec(self, stage: str) -> StageSpec:
        return StageSpec(stage, 1, {}, {t: schemas.ALL[t] for t in STAGES[stage]})

    def run(self, stage: str, *, force: bool = False, inputs: dict | None = None):
        def compute(ws: Workspace):
            self.calls[stage] += 1
            if stage in EXTRA_FILES:
                target = ws.files / EXTRA_FILES[stage]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"\x00weights\x01" * 100)
            for art in (inputs or {}).values():  # a stage reads what it was given
                for name in art.table_names:
                    art.table(name)
            return {t: sample_table(schemas.ALL[t]) for t in STAGES[stage]}

        return self.store.materialize(self.spec(stage), {"stage": stage}, inputs or {}, compute, force=force)

    def run_all(self) -> dict:
        return {stage: self.run(stage) for stage in STAGES}


def flip(path: Path, offset: int | None = None, count: int = 1) -> None:
    """Invert ``count`` bytes of ``path`` in place (the middle of the file by default): same size."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def quarantined(store: Store, stage: str) -> list[Path]:
    return sorted((store.root / stage).glob(".quarantine-*"))


def test_a_flipped_byte_in_every_stored_parquet_file_is_detected_and_recomputed(store):
    st = Stages(store)
    arts = st.run_all()
    assert set(st.calls.values()) == {1}
    assert [v for _, _, v in store.verify()] == ["ok"] * len(STAGES)
    for art in arts.values():
        for table in art.table_names:
            flip(art.path / f"{table}.parquet")
    report = {(s, k): v for s, k, v in store.verify(quarantine=False)}
    assert len(report) == len(STAGES)
    for stage, art in arts.items():
        assert report[(stage, art.key)].startswith("corrupt: "), report[(stage, art.key)]
        for table in STAGES[stage]:
            assert f"{table}.parquet: sha256 is" in report[(stage, art.key)]
    assert not any(quarantined(store, s) for s in STAGES)  # verify(quarantine=False) changed nothing
    again = st.run_all()  # the next run: every artifact quarantined and recomputed under its own key
    assert set(st.calls.values()) == {2}
    for stage, art in again.items():
        assert art.key == arts[stage].key
        [aside] = quarantined(store, stage)
        assert "sha256 is" in (aside / "QUARANTINED.txt").read_text()
        for table in STAGES[stage]:
            assert art.table(table).equals(sample_table(schemas.ALL[table]))
            n = store.query(f"select count(*) as n from {table}").column("n").to_pylist()
            assert n == [3], table  # the view holds the recomputed artifact, never the quarantined one
    assert all(v == "ok" for _, _, v in store.verify())
    files = store.query("select path from catalog_files").column("path").to_pylist()
    assert files and not [f for f in files if ".quarantine-" in f]


@pytest.mark.parametrize("where", ["header", "middle", "footer"])
def test_flip_anywhere_in_a_file_is_caught_on_the_next_materialize(store, where):
    st = Stages(store)
    art = st.run("evaluate")
    path = art.path / "predictions.parquet"
    size = path.stat().st_size
    flip(path, {"header": 4, "middle": size // 2, "footer": size - 12}[where], count=2)
    with pytest.raises(CorruptArtifact, match="predictions.parquet: sha256"):
        art.table("predictions")
    st.run("evaluate")
    assert st.calls["evaluate"] == 2 and len(quarantined(store, "evaluate")) == 1


def test_64_flipped_bytes_in_one_predictions_file_keep_the_other_artifacts_in_the_view(store, caplog):
    st = Stages(store)
    bad = st.run("evaluate")
    good = store.materialize(st.spec("evaluate"), {"other": 1}, {},
                             lambda ws: {t: sample_table(schemas.ALL[t], 5) for t in STAGES["evaluate"]})
    flip(bad.path / "predictions.parquet", count=64)
    got = store.query("select artifact_key, count(*) as n from predictions group by all").to_pylist()
    assert got == [{"artifact_key": good.key, "n": 5}]
    assert f"catalog: leaving out evaluate/{bad.key[:12]}" in caplog.text
    assert store.find("evaluate", bad.key) is None  # detected on the next lookup: quarantined
    assert len(quarantined(store, "evaluate")) == 1


def test_manifest_edited_to_claim_other_row_counts_is_detected(store):
    st = Stages(store)
    art = st.run("evaluate")
    manifest = json.loads((art.path / "manifest.json").read_text())
    manifest["rows"]["scores"] = 99
    (art.path / "manifest.json").write_text(json.dumps(manifest))
    [(_, _, verdict)] = store.verify(quarantine=False)
    assert "scores.parquet: the file holds 3 rows, the manifest records 99" in verdict
    assert store.find("evaluate", art.key) is None
    assert st.run("evaluate").manifest["rows"]["scores"] == 3 and st.calls["evaluate"] == 2


def test_size_change_is_detected(store):
    st = Stages(store)
    art = st.run("train")
    with open(art.path / "rollouts.parquet", "ab") as f:
        f.write(b"\x00")
    [(_, _, verdict)] = store.verify(quarantine=False)
    assert "rollouts.parquet: size is" in verdict
    st.run("train")
    assert st.calls["train"] == 2


def test_damaged_extra_file_is_detected(store):
    st = Stages(store)
    art = st.run("train")
    flip(art.file("checkpoint/adapter.bin"))
    [(_, _, verdict)] = store.verify(quarantine=False)
    assert "files/checkpoint/adapter.bin: sha256 is" in verdict
    assert store.find("train", art.key) is None


def test_force_recompute_never_reads_a_corrupt_input(store):
    st = Stages(store)
    examples = st.run("ingest")
    st.run("evaluate", inputs={"examples": examples})
    flip(examples.path / "examples.parquet")
    with pytest.raises(CorruptArtifact, match=r"input examples \(ingest/.*\) is corrupt: examples.parquet: sha256"):
        st.run("evaluate", inputs={"examples": examples}, force=True)
    assert st.calls["evaluate"] == 1  # refused before computing
    assert len(quarantined(store, "ingest")) == 1 and store.find("ingest", examples.key) is None
    fresh = st.run("ingest")  # the pipeline recomputes the input first, then the forced stage reads it
    assert fresh.key == examples.key and st.calls["ingest"] == 2
    st.run("evaluate", inputs={"examples": fresh}, force=True)
    assert st.calls["evaluate"] == 2


def test_hash_cache_never_hides_a_change_and_verify_never_trusts_it(store):
    st = Stages(store)
    art = st.run("evaluate")
    path = art.path / "scores.parquet"
    art.table("scores")  # hashed just now: a fresh file is not cached, so a change right after is seen
    flip(path)
    with pytest.raises(CorruptArtifact):
        art.table("scores")
    flip(path)  # restore
    old = time.time() - 60
    os.utime(path, (old, old))
    art.table("scores")  # an old file: its hash is cached by identity (inode, size, mtime, ctime)
    flip(path)
    os.utime(path, (old, old))  # same mtime; ctime moved, so the cache still misses
    with pytest.raises(CorruptArtifact):
        art.table("scores")
    assert store.verify(quarantine=False)[0][2].startswith("corrupt")


def test_old_manifest_without_records_is_accepted_and_reported_unverified(store, caplog):
    st = Stages(store)
    art = st.run("evaluate")
    manifest = json.loads((art.path / "manifest.json").read_text())
    del manifest["files"]
    (art.path / "manifest.json").write_text(json.dumps(manifest))
    found = store.find("evaluate", art.key)
    assert found is not None and found.table("scores").num_rows == 3
    assert "records no file sizes or hashes" in caplog.text
    assert store.verify() == [("evaluate", art.key, "unverified: the manifest records no file sizes or hashes")]
    st.run("evaluate")
    assert st.calls["evaluate"] == 1  # reused, not recomputed
    st.run("evaluate", force=True)
    assert "files" in store.get("evaluate", art.key).manifest  # a recompute records them


def test_gc_lists_and_removes_quarantined_dirs(store):
    st = Stages(store)
    art = st.run("ingest")
    flip(art.path / "examples.parquet")
    st.run("ingest")
    [aside] = quarantined(store, "ingest")
    assert store.gc(dry_run=True) == [aside] and aside.exists()
    assert store.gc() == [aside] and not aside.exists()
    assert store.find("ingest", art.key) is not None


def test_publish_records_every_file(store):
    art = Stages(store).run("train")
    files = art.manifest["files"]
    assert sorted(files) == ["files/checkpoint/adapter.bin", "rollouts.parquet", "train_steps.parquet"]
    for rel, rec in files.items():
        assert rec["size"] == (art.path / rel).stat().st_size and len(rec["sha256"]) == 64
    assert pq.read_metadata(art.path / "rollouts.parquet").num_rows == art.manifest["rows"]["rollouts"]


def test_an_artifact_republished_by_force_is_not_mistaken_for_corruption(store):
    st = Stages(store)
    old = st.run("ingest")
    spec = st.spec("ingest")
    new = store.materialize(spec, {"stage": "ingest"}, {}, lambda ws: {"examples": sample_table(schemas.EXAMPLES, 5)},
                            force=True)
    assert new.key == old.key and new.manifest["files"] != old.manifest["files"]
    assert old.table("examples").num_rows == 5  # the key's current content, checked against its manifest
    st.run("evaluate", inputs={"examples": old})  # an input object made before the republish
    assert st.calls["evaluate"] == 1 and not quarantined(store, "ingest")

"""Real processes: concurrent writers of one key compute once; a crash mid-publish leaves nothing visible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import schemas
from storage import StageSpec, Store

REPO = Path(__file__).resolve().parents[2]
SPEC = StageSpec("evaluate", 1, {}, {"scores": schemas.SCORES})

WORKER = r"""
import json, logging, os, sys, time
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(message)s")
import pyarrow as pa
import schemas, storage.store
from storage import StageSpec, Store

root, ready, go, counter, mode = sys.argv[2:7]
spec = StageSpec("evaluate", 1, {}, {"scores": schemas.SCORES})
ROW = {"dataset": "d", "model": "m", "method": "x", "metric": "acc", "value": 0.5, "n": 1}

def compute(ws):
    with open(counter, "a") as f:
        f.write(f"{os.getpid()} {len(ws.load_progress())}\n")
    ws.save_progress("chunk-0", pa.table({"x": [1]}))
    (ws.files / "model.bin").write_bytes(b"weights")
    time.sleep(0.5 if mode == "race" else 0)
    return {"scores": [ROW]}

if mode == "crash":  # die (no cleanup, no finally) right before the final rename
    storage.store._publish = lambda tmp, final: os._exit(3)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
art = Store(root).materialize(spec, {"a": 1}, {}, compute)
print(json.dumps({"key": art.key, "path": str(art.path), "rows": art.table("scores").num_rows}))
"""


def _start(tmp_path: Path, name: str, mode: str) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [sys.executable, str(script), str(REPO), str(tmp_path / "store"), str(tmp_path / f"ready-{name}"),
            str(tmp_path / "go"), str(tmp_path / "calls"), mode]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_together(tmp_path: Path, names: list[str], mode: str) -> list[tuple[int, str, str]]:
    (tmp_path / "go").unlink(missing_ok=True)
    procs = [_start(tmp_path, n, mode) for n in names]
    deadline = time.time() + 30
    while not all((tmp_path / f"ready-{n}").exists() for n in names):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "worker failed to start"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=30)
        results.append((p.returncode, out, err))
    return results


def test_two_processes_same_key_compute_once(tmp_path):
    results = _run_together(tmp_path, ["a", "b"], "race")
    assert [r[0] for r in results] == [0, 0], [r[2] for r in results]
    outs = [json.loads(r[1]) for r in results]
    assert outs[0] == outs[1] and outs[0]["rows"] == 1
    assert len((tmp_path / "calls").read_text().splitlines()) == 1
    logs = "".join(r[2] for r in results)
    assert "waiting for another run" in logs and "written by another run" in logs
    store = Store(tmp_path / "store")
    art = store.get("evaluate", outs[0]["key"])
    assert art.file("model.bin").read_bytes() == b"weights"
    assert [p.name for p in (store.root / "evaluate").iterdir()] == [art.key]
    n = store.query("select count(*) as n, any_value(artifact_key) as k from scores").to_pylist()
    assert n == [{"n": 1, "k": art.key}]


def test_crash_before_publish_leaves_nothing_visible_then_resumes(tmp_path):
    [(code, out, err)] = _run_together(tmp_path, ["a"], "crash")
    assert code == 3 and out == "", err
    store = Store(tmp_path / "store")
    key = store.key_for(SPEC, {"a": 1}, {})
    sdir = store.root / "evaluate"
    hidden = sorted(p.name.split("-")[0] for p in sdir.iterdir())
    assert hidden == [".lock", ".partial", ".tmp"]  # tmp was complete; the lock died with the process
    assert store.find("evaluate", key) is None and store.list() == []
    assert store.query("select count(*) as n from artifacts").column("n").to_pylist() == [0]
    assert "scores" not in store.query("select view_name from duckdb_views()").column(0).to_pylist()
    [(code, out, err)] = _run_together(tmp_path, ["b"], "ok")  # next run resumes from partial progress
    assert code == 0, err
    assert (tmp_path / "calls").read_text().split()[1::2] == ["0", "1"]
    art = store.get("evaluate", key)
    assert art.file("model.bin").read_bytes() == b"weights"
    removed = store.gc()
    assert [p.name.split("-")[0] for p in removed] == [".tmp"] and os.listdir(sdir) == [key]


READER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from storage import Store

store, key, go = Store(sys.argv[2]), sys.argv[3], sys.argv[4]
while not __import__("os").path.exists(go):
    time.sleep(0.005)
for _ in range(8):  # look up (integrity read check), read whole (full hash) and query through the catalog
    assert store.get("evaluate", key).table("scores").num_rows == 1
    assert store.query("select count(*) as n from scores").column("n").to_pylist() == [1]
print("ok")
"""


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _seed(tmp_path: Path):
    """The artifact the workers compute, published beforehand by this process."""
    row = {"dataset": "d", "model": "m", "method": "x", "metric": "acc", "value": 0.5, "n": 1}
    return Store(tmp_path / "store").materialize(SPEC, {"a": 1}, {}, lambda ws: {"scores": [row]})


def test_concurrent_readers_of_an_intact_artifact_all_succeed(tmp_path):
    art = _seed(tmp_path)
    script = tmp_path / "reader.py"
    script.write_text(READER)
    procs = [subprocess.Popen([sys.executable, str(script), str(REPO), str(tmp_path / "store"), art.key,
                               str(tmp_path / "go")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    (tmp_path / "go").touch()
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert [out.strip() for out, _ in results] == ["ok"] * 3
    assert os.listdir(tmp_path / "store" / "evaluate") == [art.key]  # nothing quarantined, nothing left


def test_two_runs_finding_one_corrupt_artifact_quarantine_once_and_compute_once(tmp_path):
    art = _seed(tmp_path)
    _flip_middle(art.path / "scores.parquet")
    results = _run_together(tmp_path, ["a", "b"], "race")
    assert [r[0] for r in results] == [0, 0], [r[2] for r in results]
    assert [json.loads(r[1])["rows"] for r in results] == [1, 1]
    assert len((tmp_path / "calls").read_text().splitlines()) == 1
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "store" / "evaluate").iterdir())
    assert names == [".quarantine", art.key]
    assert Store(tmp_path / "store").verify() == [("evaluate", art.key, "ok")]

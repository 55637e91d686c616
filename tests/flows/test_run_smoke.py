"""`unisd run` end to end in-process mode (Prefect ephemeral) on the smoke preset, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.catalog import query

pytestmark = pytest.mark.integration
UNISD = str(Path(sys.executable).parent / "unisd")


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), UNISD_STORE=str(tmp_path / "store"),
                PREFECT_SERVER_ANALYTICS_ENABLED="false")


def _run(tmp_path, *args, timeout=300):
    return subprocess.run([UNISD, *args], env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout)


def test_run_rerun_and_resume_after_kill(tmp_path, tiny_model_dir):
    # 1) killed during evaluation: chunk_size=1 saves progress after every example
    args = ["run", "--preset", "smoke", "evaluate.chunk_size=1", "evaluate.batch_size=1"]
    proc = subprocess.Popen([UNISD, *args], env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    store = tmp_path / "store"
    deadline = time.time() + 240
    while not list(store.glob("evaluate/.partial-*/progress/*.parquet")):
        assert proc.poll() is None, "run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not [p for p in store.glob("evaluate/*") if not p.name.startswith(".")]  # nothing half-visible

    # 2) the rerun resumes and completes with no duplicated rows
    res = _run(tmp_path, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    dup = query(store, "SELECT id, sample, count(*) c FROM predictions GROUP BY ALL HAVING c > 1")
    assert dup.num_rows == 0
    n = query(store, "SELECT dataset, count(*) AS n FROM predictions GROUP BY dataset ORDER BY dataset")
    ex = query(store, "SELECT dataset, count(*) AS n FROM examples WHERE split = 'test' GROUP BY dataset "
                      "ORDER BY dataset")
    assert n.to_pylist() == ex.to_pylist()
    scores = query(store, "SELECT dataset, metric, value, n FROM scores")
    assert {"accuracy", "pass@1"} <= set(scores.column("metric").to_pylist())

    # 3) nothing changed: every stage is served from the store, no new artifacts
    def artifacts():  # every run adds its own log file under logs/; artifacts must not change
        return sorted(p.name for p in store.glob("*/*") if p.parent.name != "logs")

    before = artifacts()
    t0 = time.time()
    res = _run(tmp_path, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert artifacts() == before
    assert "computing" not in res.stderr.lower()
    print(f"cached rerun took {time.time() - t0:.1f}s")


def test_bad_override_fails_fast_with_one_line(tmp_path):
    res = _run(tmp_path, "run", "--preset", "smoke", "evaluate.batch_sise=3", timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["unisd: error: evaluate.batch_sise: unknown key "
                                               "(valid: " + res.stderr.split("(valid: ")[1].strip()]
    assert not (tmp_path / "store").exists()

"""Manifest timings count every attempt of a resumed stage, and each stage's peak memory is its own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

import schemas
from storage import StageSpec, Store

REPO = Path(__file__).resolve().parents[2]
SPEC = StageSpec("evaluate", 1, {}, {"scores": schemas.SCORES})
ROW = {"dataset": "d", "model": "m", "method": "x", "metric": "acc", "value": 0.5, "n": 1}

SLOW = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import schemas
from storage import StageSpec, Store
spec = StageSpec("evaluate", 1, {}, {"scores": schemas.SCORES})
def compute(ws):
    open(sys.argv[3], "w").close()
    time.sleep(60)
Store(sys.argv[2]).materialize(spec, {"k": 1}, {}, compute)
"""


def test_a_killed_attempt_counts_in_the_finished_timings(tmp_path):
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", SLOW, str(REPO), str(tmp_path / "store"), str(started)])
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3.0)  # the first attempt works for ~3 s, then is SIGKILLed (no cleanup runs)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    art = Store(tmp_path / "store").materialize(SPEC, {"k": 1}, {}, lambda ws: {"scores": [ROW]})
    timings = art.manifest["timings"]
    assert timings["attempts"] == 2
    assert timings["last_attempt_seconds"] < 1.0
    assert timings["seconds"] >= 1.5 + timings["last_attempt_seconds"]  # heartbeat every 2 s: ≥ 2 s recorded


def test_an_interrupted_attempt_counts_too(tmp_path):
    store = Store(tmp_path)

    def interrupted(ws):
        time.sleep(0.3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.materialize(SPEC, {"k": 2}, {}, interrupted)
    art = store.materialize(SPEC, {"k": 2}, {}, lambda ws: {"scores": [ROW]})
    t = art.manifest["timings"]
    assert t["attempts"] == 2 and t["seconds"] >= 0.3 + t["last_attempt_seconds"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/clear_refs")
def test_each_stage_reports_its_own_peak_memory(tmp_path):
    store = Store(tmp_path)

    def hungry(ws):
        hog = bytearray(300 * 2**20)
        hog[::4096] = b"x" * len(hog[::4096])
        del hog
        return {"scores": [ROW]}

    first = store.materialize(SPEC, {"k": 3}, {}, hungry).manifest["timings"]
    second = store.materialize(SPEC, {"k": 4}, {}, lambda ws: {"scores": pa.Table.from_pylist(
        [ROW], schema=schemas.SCORES.schema)}).manifest["timings"]
    assert first["peak_rss_scope"] == second["peak_rss_scope"] == "stage"
    assert second["peak_rss_mb"] < first["peak_rss_mb"] - 250  # not inherited from the stage before
    assert json.dumps(first)  # plain JSON in the manifest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/clear_refs")
def test_reset_starts_a_new_rss_peak_window():
    from storage.attempts import reset_rss_peak, rss_peak_mb

    assert reset_rss_peak()
    before = rss_peak_mb()
    hog = bytearray(300 * 2**20)
    hog[::4096] = b"x" * len(hog[::4096])
    high = rss_peak_mb()
    assert high >= before + 250
    del hog
    assert rss_peak_mb() >= high - 1  # without a reset the peak stays (what ru_maxrss reports forever)
    assert reset_rss_peak()
    assert rss_peak_mb() < high - 250

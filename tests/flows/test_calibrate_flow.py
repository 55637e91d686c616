"""The calibration phase end to end on the tiny model: every method × grid point scored on validation,
each method's choice recorded in the catalog, the final runs trained at that choice and read on test.

The tiny random model scores 0 everywhere, so every point ties and the tie rule (the first point of the
grid) decides; the test puts the larger learning rate first to show the choice is the grid's, not a
hard-coded default.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.catalog import query

pytestmark = pytest.mark.integration
UNISD = str(Path(sys.executable).parent / "unisd")
OVERRIDES = ["methods=[base,sd]", "datasets=[{dataset: math, source: bundled, test_fraction: 0.5, limit: 4}]",
             "calibrate.grid={lr: [1.0e-3, 1.0e-4]}", "seeds=[0,1]", "signals.enabled=false"]


def test_calibration_chooses_on_validation_and_the_final_runs_use_the_choice(tmp_path, tiny_model_dir):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), UNISD_STORE=str(tmp_path / "store"))
    res = subprocess.run([UNISD, "run", "--preset", "smoke_train", *OVERRIDES], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    store = tmp_path / "store"
    cal = query(store, "SELECT method, point, split, chosen, n FROM calibration ORDER BY ALL").to_pylist()
    assert cal == [{"method": "base", "point": "", "split": "validation", "chosen": False, "n": 4},
                   {"method": "sd", "point": "lr=0.0001", "split": "validation", "chosen": False, "n": 4},
                   {"method": "sd", "point": "lr=0.001", "split": "validation", "chosen": True, "n": 4}]
    trains = query(store, "SELECT key, config->'train'->>'lr' lr, config->'train'->>'seed' seed FROM artifacts "
                          "WHERE stage = 'train' ORDER BY seed, lr").to_pylist()
    # two calibration runs at seed 0, and seed 1 at the chosen rate only: seed 0's final run is reused
    assert [(float(r["lr"]), int(r["seed"])) for r in trains] == [(1e-4, 0), (1e-3, 0), (1e-3, 1)]
    scores = query(store, "SELECT method, seed, split FROM scores WHERE metric = 'accuracy' ORDER BY ALL").to_pylist()
    assert scores == [{"method": "base", "seed": None, "split": "test"},
                      {"method": "base", "seed": None, "split": "validation"},
                      {"method": "sd", "seed": 0, "split": "test"}, {"method": "sd", "seed": 0, "split": "validation"},
                      {"method": "sd", "seed": 0, "split": "validation"}, {"method": "sd", "seed": 1, "split": "test"}]
    # the test split is evaluated only with checkpoints at the chosen rate
    chosen = {r["key"] for r in trains if float(r["lr"]) == 1e-3}
    tested = query(store, "SELECT inputs->>'checkpoint' ckpt FROM artifacts WHERE stage = 'evaluate' "
                          "AND config->'evaluate'->>'split' = 'test' AND inputs->>'checkpoint' IS NOT NULL").to_pylist()
    assert len(tested) == 2 and {r["ckpt"] for r in tested} <= chosen
    report = next((store / "report").glob("*/files/report.md")).read_text()
    assert "## Calibration (validation split)" in report and "| sd | lr=0.001 |" in report

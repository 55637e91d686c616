"""`unisd run --preset smoke_train`: every stage (negatives, retrieval, contexts, train, evaluate) in one flow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.catalog import query

pytestmark = pytest.mark.integration
UNISD = str(Path(sys.executable).parent / "unisd")


def test_training_methods_end_to_end(tmp_path, tiny_model_dir):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), UNISD_STORE=str(tmp_path / "store"))
    res = subprocess.run([UNISD, "run", "--preset", "smoke_train"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    store = tmp_path / "store"
    rows = query(store, "SELECT stage, count(*) n FROM artifacts GROUP BY stage").to_pylist()
    stages = {r["stage"]: r["n"] for r in rows}
    # 2 datasets: ingest 2, negatives 2, retrieval 2, contexts 2 per strategy, train 2 per method,
    # evaluate 2 per method (base, sd, unisd_star), signals 2 (on unisd_star's own views: no extra contexts)
    assert stages == {"ingest": 2, "negatives": 2, "retrieval": 2, "contexts": 4, "signals": 2, "train": 4,
                      "evaluate": 6, "analyze": 6, "compare": 1, "report": 1}
    signals = query(store, "SELECT dataset, split, count(*) n FROM signals GROUP BY ALL ORDER BY ALL").to_pylist()
    assert [(r["dataset"], r["split"]) for r in signals] == [("math", "train"), ("medmcqa", "train")]
    assert all(r["n"] >= 10 for r in signals)  # every statistic, per dataset
    report = query(store, "SELECT key FROM artifacts WHERE stage = 'report'").column("key").to_pylist()[0]
    assert "## Signals" in (store / "report" / report / "files" / "report.md").read_text()
    terms = query(store, "SELECT DISTINCT unnest(map_keys(metrics)) k FROM train_steps WHERE method = 'unisd_star'")
    keys = set(terms.column("k").to_pylist())
    assert {"train/loss/divergence", "train/loss/contrastive", "train/loss/features",
            "train/agreement/weight_mean"} <= keys
    per = query(store, "SELECT method, dataset, count(*) n FROM train_steps GROUP BY ALL ORDER BY ALL").to_pylist()
    assert per == [{"method": m, "dataset": d, "n": 2} for m in ("sd", "unisd_star") for d in ("math", "medmcqa")]
    methods = query(store, "SELECT DISTINCT method FROM scores ORDER BY method").column("method").to_pylist()
    assert methods == ["base", "sd", "unisd_star"]
    leaked = query(store, """SELECT count(*) n FROM contexts c JOIN examples e USING (id)
                             WHERE c.view LIKE 'aux%' AND e.rationale IS NOT NULL AND contains(c.text, e.rationale)""")
    assert leaked.column("n").to_pylist() == [0]

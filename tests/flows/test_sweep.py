"""`unisd report --preset smoke_sweep`: methods × datasets × seeds, a transfer pair, analyze, compare, report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.catalog import query

pytestmark = pytest.mark.integration
UNISD = str(Path(sys.executable).parent / "unisd")
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_recipes() -> list[str]:
    """Every statement of the README's ```sql blocks (comments stripped)."""
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.DOTALL)
    text = "\n".join(line for b in blocks for line in b.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def test_sweep_end_to_end_then_served_from_the_store(tmp_path, tiny_model_dir):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), UNISD_STORE=str(tmp_path / "store"))
    cmd = [UNISD, "report", "--preset", "smoke_sweep", "--out", str(tmp_path / "report")]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    store = tmp_path / "store"
    stages = {r["stage"]: r["n"] for r in
              query(store, "SELECT stage, count(*) n FROM artifacts GROUP BY stage").to_pylist()}
    # 3 methods × 2 seeds × 2 datasets = 12 checkpoints, each evaluated on its dataset; the 6 trained on
    # medmcqa also on math; plus base on both datasets
    assert (stages["train"], stages["evaluate"], stages["analyze"]) == (12, 20, 20)
    assert (stages["compare"], stages["report"]) == (1, 1)
    seeds = query(store, """SELECT method, list(DISTINCT seed ORDER BY seed) s FROM scores
                            WHERE metric = 'accuracy' GROUP BY method ORDER BY method""").to_pylist()
    assert seeds == [{"method": "base", "s": [None]}] + [{"method": m, "s": [0, 1]} for m in ("sd", "sft", "unisd_star")]
    transfer = query(store, "SELECT count(*) n FROM scores WHERE trained_on = 'medmcqa' AND dataset = 'math' "
                            "AND metric = 'accuracy'").column("n").to_pylist()
    assert transfer == [6]
    ret = query(store, "SELECT method, min(jsd) lo, max(jsd) hi, count(*) n FROM retention GROUP BY method").to_pylist()
    for r in ret:
        assert 0.0 <= r["lo"] <= r["hi"] <= 0.6932
        assert (r["lo"] == r["hi"] == 0.0) == (r["method"] == "base")
    stats = {(r["dataset"], r["method"], r["baseline"], r["statistic"]) for r in
             query(store, "SELECT * FROM comparisons").to_pylist()}
    assert ("medmcqa", "unisd_star", "sft", "jsd_lower") in stats
    assert ("medmcqa→math", "sd", "base", "accuracy_diff") in stats
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| method | medmcqa | math | medmcqa→math | Overall |" in md
    assert "| method | dataset | examples | PPL_fit | PPL_ret | JSD | base log p |" in md
    assert "| sd | medmcqa→math | 8 |" in md  # 4 maths test items × 2 seeds
    for method in ("base", "sft", "sd", "unisd_star"):
        assert f"| {method} |" in md
    assert len(list((tmp_path / "report" / "figures").glob("*.png"))) == 3
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3

    recipes = readme_recipes()
    assert len(recipes) >= 8
    for sql in recipes:  # the README's SQL recipes run on a real sweep's store and return rows
        assert query(store, sql).num_rows > 0, sql

    started = time.monotonic()  # everything again: served from the store, nothing recomputed
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    again = {r["stage"]: r["n"] for r in
             query(store, "SELECT stage, count(*) n FROM artifacts GROUP BY stage").to_pylist()}
    assert again == stages
    assert "computing" not in res.stderr
    assert time.monotonic() - started < 120


def test_a_models_sweep_gives_each_model_its_runs_and_report(tmp_path, tiny_model_dir):
    import shutil

    other = tmp_path / "tiny-b"
    shutil.copytree(tiny_model_dir, other)
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), UNISD_STORE=str(tmp_path / "store"))
    models = f"models=[{{path: embedded:tiny-random-llama, name: tiny-a}}, {{path: {other}}}]"
    cmd = [UNISD, "report", "--preset", "smoke_train", "methods=[base,sd]", "datasets.1.limit=2", models,
           "--out", str(tmp_path / "report")]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    store = tmp_path / "store"
    per_model = query(store, """SELECT model, method, count(*) n FROM scores WHERE metric = 'accuracy'
                                GROUP BY ALL ORDER BY ALL""").to_pylist()
    assert per_model == [{"model": m, "method": k, "n": 2} for m in ("tiny-a", "tiny-b") for k in ("base", "sd")]
    assert query(store, "SELECT DISTINCT model FROM retention ORDER BY model").column("model").to_pylist() == [
        "tiny-a", "tiny-b"]
    assert query(store, "SELECT DISTINCT model FROM comparisons ORDER BY model").column("model").to_pylist() == [
        "tiny-a", "tiny-b"]
    for label in ("tiny-a", "tiny-b"):
        md = (tmp_path / "report" / label / "report.md").read_text()
        assert md.startswith("# smoke_train") and "| sd |" in md
    rows = query(store, "SELECT stage, count(*) n FROM artifacts GROUP BY stage").to_pylist()
    stages = {r["stage"]: r["n"] for r in rows}
    # shared by both models: per dataset one privileged view set (sd) and one random-donor view set (the
    # signals' agreement spread, since sd has no views of its own)
    assert (stages["ingest"], stages["contexts"], stages["signals"]) == (2, 4, 4)
    assert (stages["train"], stages["compare"], stages["report"]) == (4, 2, 2)  # 2 models × 2 datasets

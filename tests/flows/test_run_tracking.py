"""`unisd run --preset smoke_train tracking=[mlflow,tensorboard,wandb]`: each trained (method, dataset) is one
tracker run holding every step's metrics, the config and the final scores, read back with each tool's own
reader; a rerun served from the store adds no run and no duplicate step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
UNISD = str(Path(sys.executable).parent / "unisd")
RUNS = {f"smoke_train/tiny-random-llama/{m}/seed0/{d}" for m in ("sd", "unisd_star") for d in ("math", "medmcqa")}


def _run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_", "UNISD_TENSORBOARD"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), UNISD_STORE=str(tmp_path / "store"))
    res = subprocess.run([UNISD, "run", "--preset", "smoke_train", "tracking=[mlflow,tensorboard,wandb]"], env=env,
                         check=False,
                         cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "tracking:" not in res.stderr  # no tracker warned


def _mlflow(tmp_path: Path) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store' / 'tracking' / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke_train")
    runs = client.search_runs([exp.experiment_id])
    return {r.info.run_name: (r, [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "train/loss")])
            for r in runs} | {"_count": len(runs)}


def test_trackers_hold_steps_config_and_scores(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from storage.tracking.backends import read_wandb_run

    _run(tmp_path)
    runs = _mlflow(tmp_path)
    assert runs.pop("_count") == 4 and set(runs) == RUNS
    for name, (run, history) in runs.items():
        assert [s for s, _ in history] == [1, 2], name
        metrics = set(run.data.metrics)
        assert {"train/tokens_per_s", "train/peak_mem_mb", "train/loss/divergence", "train/lr"} <= metrics
        dataset = name.rsplit("/", 1)[1]
        assert {f"eval/{dataset}/accuracy", f"eval/{dataset}/accuracy_ci_low", f"retention/{dataset}/jsd"} <= metrics
        assert run.data.params["train.steps"] == "2" and len(run.data.tags["unisd_key"]) == 64
    star = runs["smoke_train/tiny-random-llama/unisd_star/seed0/math"][0].data.metrics
    assert {"train/agreement/weight_mean", "train/loss/contrastive", "train/kl_to_start"} <= set(star)

    tb = tmp_path / "store" / "tracking" / "tensorboard"
    folders = {p.parent for p in tb.rglob("events.out.tfevents.*")}
    assert {str(f.relative_to(tb).parent) for f in folders} == RUNS
    for folder in folders:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
        assert any(t.startswith("eval/") for t in acc.Tags()["scalars"])

    files = sorted((tmp_path / "store" / "tracking" / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    names, steps = set(), {}
    for f in files:
        for rec in read_wandb_run(f, wait_s=30):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                names.add(rec.run.display_name)
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                if "train/loss" in row:
                    steps.setdefault(f.name, []).append(row["_step"])
    assert names == RUNS and len(steps) == 4 and all(s == [1, 2] for s in steps.values())

    _run(tmp_path)  # everything is served from the store: the trackers gain no run and no step
    again = _mlflow(tmp_path)
    assert again.pop("_count") == 4
    assert {n: h for n, (_, h) in again.items()} == {n: h for n, (_, h) in runs.items()}

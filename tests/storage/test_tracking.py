"""Experiment trackers for real, offline: MLflow (SQLite URI, read back with MlflowClient), TensorBoard
(event files read back with tensorboard's EventAccumulator), wandb offline (its .wandb run file parsed);
a failing tracker warns once and never stops the caller; a cached training is replayed once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from storage.tracking import (
    Tracker,
    TrackingRun,
    check_backends,
    open_tracker,
    retention_metrics,
    run_name,
    score_metrics,
    step_metrics,
)
from storage.tracking.backends import read_wandb_run

KEY = "ab" * 32
CONFIG = {"experiment": "exp", "train": {"lr": 1e-4, "steps": 3, "lora": {"r": 4}}, "method": "sd"}


def _run(tmp_path: Path, backends: tuple[str, ...], name: str = "exp/tiny/sd/seed0/math") -> TrackingRun:
    return TrackingRun(backends=backends, root=tmp_path / "tracking", experiment="exp", name=name,
                       tags={"method": "sd", "seed": "seed0", "dataset": "math"}, config=CONFIG)


def _row(step: int) -> dict:
    return {"step": step, "method": "sd", "loss": 1.0 / step, "lr": 1e-4, "tokens_per_s": 10.0 * step,
            "step_seconds": 0.5, "peak_mem_mb": 900.0,
            "metrics": {"train/loss/divergence": 0.5 / step, "train/agreement/weight_mean": 0.8,
                        "train/clip/fraction": 0.25, "train/kl_to_start": 0.01 * step}}


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "UNISD_TENSORBOARD_DIR", "WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)


def test_run_name_and_unknown_tracker_is_one_line_error():
    assert run_name("exp", "smollm2", "unisd_star", 3, "medmcqa") == "exp/smollm2/unisd_star/seed3/medmcqa"
    with pytest.raises(ValueError, match=r"^tracking: unknown tracker 'neptune' \(known: mlflow, tensorboard, wandb\)$"):
        check_backends(["mlflow", "neptune"])
    with pytest.raises(ValueError, match="listed twice"):
        check_backends(["wandb", "wandb"])


def test_metric_names_from_tables():
    m = step_metrics({**_row(2), "metrics": list(_row(2)["metrics"].items())})  # Arrow maps read as pairs
    assert m["train/loss"] == 0.5 and m["train/tokens_per_s"] == 20.0 and m["train/clip/fraction"] == 0.25
    s = score_metrics([{"dataset": "math", "metric": "accuracy", "value": 0.5, "n": 4, "stderr": 0.25}], z=2.0)
    assert s == {"eval/math/accuracy": 0.5, "eval/math/n": 4, "eval/math/accuracy_ci_low": 0.0,
                 "eval/math/accuracy_ci_high": 1.0}
    r = retention_metrics([{"dataset": "math", "jsd": 0.1, "ppl_ret": 2.0, "base_logp": -1.0, "ppl_fit": None},
                           {"dataset": "math", "jsd": 0.3, "ppl_ret": 4.0, "base_logp": -2.0, "ppl_fit": None}], z=1.0)
    assert r["retention/math/jsd"] == pytest.approx(0.2) and r["retention/math/n"] == 2
    assert "retention/math/ppl_fit" not in r and r["retention/math/jsd_ci_low"] < 0.2 < r["retention/math/jsd_ci_high"]


def test_mlflow_sqlite_steps_config_and_reopened_scores(tmp_path, clean_env):
    from mlflow import MlflowClient

    run = _run(tmp_path, ("mlflow",))
    with open_tracker(run, KEY) as tracker:
        assert [lg.existed for lg in tracker.loggers] == [False]
        for step in (1, 2, 3):
            tracker.on_step(step, _row(step))
    with open_tracker(run, KEY) as tracker:  # a later stage reopens the run by the store key
        assert [lg.existed for lg in tracker.loggers] == [True]
        tracker.log_metrics({"eval/math/pass@1": 0.75})
    db = tmp_path / "tracking" / "mlflow" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")  # what `mlflow ui --backend-store-uri` opens
    exp = client.get_experiment_by_name("exp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "exp/tiny/sd/seed0/math"
    got = runs[0]
    assert got.data.tags["unisd_key"] == KEY and got.data.tags["method"] == "sd"
    assert got.data.params["train.lr"] == "0.0001" and got.data.params["store_key"] == KEY
    history = client.get_metric_history(got.info.run_id, "train/loss")
    assert [(h.step, h.value) for h in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert {"train/kl_to_start", "train/agreement/weight_mean", "train/peak_mem_mb"} <= set(got.data.metrics)
    assert got.data.metrics["eval/math/pass_1"] == 0.75  # '@' is not allowed in MLflow names
    assert got.info.status == "FINISHED"


def test_tensorboard_events_read_back(tmp_path, clean_env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, ("tensorboard",))
    with open_tracker(run, KEY) as tracker:
        for step in (1, 2):
            tracker.on_step(step, _row(step))
    with open_tracker(run, KEY) as tracker:
        assert tracker.loggers[0].existed
        tracker.log_metrics({"eval/math/accuracy": 0.5})
    folder = tmp_path / "tracking" / "tensorboard" / "exp" / "tiny" / "sd" / "seed0" / "math" / KEY[:8]
    acc = EventAccumulator(str(folder))
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/loss/divergence", "train/tokens_per_s", "eval/math/accuracy"} <= set(tags["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 0.5)]
    assert any(t.startswith("config") for t in tags["tensors"])  # the config as text


def test_wandb_offline_run_folder(tmp_path, clean_env):
    run = _run(tmp_path, ("wandb",))
    with open_tracker(run, KEY) as tracker:
        for step in (1, 2):
            tracker.on_step(step, _row(step))
        tracker.log_metrics({"eval/math/accuracy": 0.5})
    files = list((tmp_path / "tracking" / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = read_wandb_run(files[0], wait_s=60)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds, kinds
    header = records[kinds.index("run")].run
    assert header.display_name == "exp/tiny/sd/seed0/math"
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["train"]["lr"] == 1e-4 and config["store_key"] == KEY
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    steps = [h for h in history if "train/loss" in h]
    assert [(h["_step"], h["train/loss"]) for h in steps] == [(1, 1.0), (2, 0.5)]
    assert steps[0]["train/kl_to_start"] == 0.01
    assert any(h.get("eval/math/accuracy") == 0.5 for h in history)


class Flaky:
    """A backend of the caller's own whose third call fails (the guard under test, not a stand-in)."""

    backend, existed = "flaky", False

    def __init__(self, *_):
        self.calls = 0

    def log_config(self, config):
        pass

    def log_metrics(self, metrics, step):
        self.calls += 1
        if self.calls == 2:
            raise OSError("disk full")

    def close(self):
        raise AssertionError("a dropped backend is not closed")


def test_failing_tracker_warns_once_and_never_stops(tmp_path, clean_env, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def broken(*_):
        raise ConnectionError("tracking server unreachable")

    run = _run(tmp_path, ("flaky", "broken", "tensorboard"))
    with caplog.at_level(logging.WARNING, logger="storage.tracking"):
        tracker = open_tracker(run, KEY, extra={"flaky": Flaky, "broken": broken})
        for step in range(1, 6):
            tracker.on_step(step, _row(step))
        tracker.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "flaky failed in log_metrics (OSError: disk full)" in warnings[1]
    assert "broken failed in open" in warnings[0]
    acc = EventAccumulator(str(next((tmp_path / "tracking" / "tensorboard").rglob("events.out.tfevents.*")).parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5]  # the healthy backend got every step


def test_replay_sends_stored_steps_only_to_runs_that_never_saw_them(tmp_path, clean_env):
    run = _run(tmp_path, ("mlflow",))
    rows = [_row(s) for s in (1, 2, 3)]
    with open_tracker(run, KEY) as tracker:  # trained live: nothing is replayed
        for r in rows:
            tracker.on_step(r["step"], r)
        assert tracker.replay(rows) == 0
    with open_tracker(run, KEY) as tracker:  # a cache hit on a tracked run: nothing either
        assert tracker.replay(rows) == 0
    with open_tracker(run, "cd" * 32) as tracker:  # a training the tracker never saw: replayed once
        assert tracker.replay(rows) == 3
    assert Tracker([]).replay(rows) == 0


def test_unreachable_mlflow_server_is_one_warning(tmp_path, clean_env, monkeypatch, caplog):
    """A real MLflow client against a closed loopback port: the run goes on without it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with caplog.at_level(logging.WARNING, logger="storage.tracking"):
        tracker = open_tracker(_run(tmp_path, ("mlflow", "tensorboard")), KEY)
        tracker.on_step(1, _row(1))
        tracker.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("tracking: mlflow failed in open")
    assert any((tmp_path / "tracking" / "tensorboard").rglob("events.out.tfevents.*"))

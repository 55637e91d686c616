"""Tracking in the train stage: never part of the artifact key; a cached training is replayed into a
tracker that never saw it, exactly once; a live training streams each step once."""

from __future__ import annotations

from dataclasses import replace

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stages import pipeline
from storage import Store
from storage.tracking import TrackingRun


def _steps(folder) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


def test_cached_training_is_replayed_once_and_keeps_its_key(trained, tmp_path, monkeypatch):
    monkeypatch.delenv("UNISD_TENSORBOARD_DIR", raising=False)
    t = trained
    store = Store(t.exp.store_path)
    run = TrackingRun(backends=("tensorboard",), root=tmp_path / "tracking", experiment="exp",
                      name="exp/tiny/sd/seed0/math")
    cfg = t.exp.run_config("sd", 0)
    for _ in range(2):  # the second call finds the run already there: nothing is logged twice
        art = pipeline.train(store, cfg, t.exp.model, t.examples, t.contexts, None, "sd", tracking=run)
        assert art.key == t.train.key  # served from the store: tracking is not in the key
    folder = tmp_path / "tracking" / "tensorboard" / run.name / art.key[:8]
    stored = [(r["step"], r["loss"]) for r in art.table("train_steps").to_pylist()]
    assert [(s, round(v, 6)) for s, v in _steps(folder)] == [(s, round(v, 6)) for s, v in stored]


def test_live_training_streams_every_step_once(trained, tmp_path, monkeypatch):
    monkeypatch.delenv("UNISD_TENSORBOARD_DIR", raising=False)
    t = trained
    store = Store(t.exp.store_path)
    run = TrackingRun(backends=("tensorboard",), root=tmp_path / "tracking", experiment="exp",
                      name="exp/tiny/sd/seed0/math")
    cfg = replace(t.exp.run_config("sd", 0), steps=2, lr=1e-3)  # a new key: this one trains
    art = pipeline.train(store, cfg, t.exp.model, t.examples, t.contexts, None, "sd", tracking=run)
    assert art.key != t.train.key
    assert [s for s, _ in _steps(tmp_path / "tracking" / "tensorboard" / run.name / art.key[:8])] == [1, 2]

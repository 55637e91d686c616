"""Shared fixtures of the stage tests: one small trained, evaluated and analyzed checkpoint in a store."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from stages import pipeline
from storage import Store
from unisd.config import load_experiment

TRAINED_OVERRIDES = ["datasets=[{dataset: math, source: bundled, test_fraction: 0.5, limit: 4}]",
                     "methods=[base, sd]", "train.steps=1", "analyze.bootstrap=50"]
"""The smoke_train overrides the `trained` store was built with (an `unisd export` of it repeats them)."""


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_model_dir):
    """One sd checkpoint (1 step), evaluated and analyzed, in a fresh store — the pipeline's own stages."""
    root = tmp_path_factory.mktemp("export")
    exp = load_experiment("smoke_train", overrides=[f"store={root / 'store'}", *TRAINED_OVERRIDES])
    store = Store(exp.store_path)
    examples = pipeline.ingest(store, exp.datasets[0])
    ctx = pipeline.contexts(store, replace(exp.contexts, strategy="random", num_views=0), examples, {})
    cfg = exp.run_config("sd", 0)
    train = pipeline.train(store, cfg, exp.model, examples, ctx, None, "sd")
    base_ev = pipeline.evaluate(store, exp.model, exp.evaluate, examples)
    ev = pipeline.evaluate(store, exp.model, exp.evaluate, examples, method="sd", checkpoint=train, seed=0,
                           trained_on="math")
    an = pipeline.analyze(store, exp.analyze, exp.model, examples, ev, train, method="sd", seed=0, trained_on="math")
    base_an = pipeline.analyze(store, exp.analyze, exp.model, examples, base_ev, None, method="base")
    pipeline.compare(store, exp.analyze, [base_ev, ev], [base_an, an])
    return SimpleNamespace(root=root, train=train, evaluation=ev, exp=exp, examples=examples, contexts=ctx,
                           overrides=TRAINED_OVERRIDES)

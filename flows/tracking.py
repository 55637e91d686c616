"""Experiment tracking in the flow: which tracker run a training is, and its final scores.

The train task hands `train_run(...)` to `stages.pipeline.train`, which streams every step to the
trackers; after each evaluate/analyze of a trained checkpoint, `log_results` reopens that run (by the
train artifact's store key) and logs the scores with their CIs and the retention means.
"""

from __future__ import annotations

from statistics import NormalDist

from storage import Artifact
from storage.tracking import (
    TrackingRun,
    open_tracker,
    retention_metrics,
    run_name,
    score_metrics,
)
from unisd.config import ExperimentConfig
from unisd.configtools import to_dict


def train_run(exp: ExperimentConfig, method: str, seed: int, dataset: str) -> TrackingRun | None:
    """The tracker run of (exp.model, method, seed, dataset), or None when tracking is off."""
    if not exp.tracking:
        return None
    model = exp.model.label
    source = next((to_dict(d) for d in exp.datasets if d.label == dataset), {})
    config = {"experiment": exp.name, "model": to_dict(exp.model), "method": method, "seed": seed,
              "dataset": source, "train": to_dict(exp.run_config(method, seed)), "evaluate": to_dict(exp.evaluate),
              "analyze": to_dict(exp.analyze)}
    tags = {"experiment": exp.name, "model": model, "method": method, "seed": f"seed{seed}", "dataset": dataset}
    return TrackingRun(backends=tuple(exp.tracking), root=exp.store_path / "tracking", experiment=exp.name,
                       name=run_name(exp.name, model, method, seed, dataset), tags=tags, config=config)


def log_results(exp: ExperimentConfig, stage: str, args: dict, arts: dict[str, Artifact], art: Artifact) -> None:
    """After evaluate/analyze of a trained checkpoint: its scores or retention into the training's run."""
    if not exp.tracking or stage not in ("evaluate", "analyze") or "checkpoint" not in arts:
        return
    run = train_run(exp, args["method"], args["seed"], args["trained_on"])
    z = NormalDist().inv_cdf(0.5 + exp.analyze.confidence / 2)
    if stage == "evaluate":
        metrics = score_metrics(art.table("scores").to_pylist(), z)
    else:
        metrics = retention_metrics(art.table("retention").to_pylist(), z)
    with open_tracker(run, arts["checkpoint"].key) as tracker:
        tracker.log_metrics(metrics)

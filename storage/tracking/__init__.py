"""Experiment tracking: every training step, the resolved config and the final scores of a run, mirrored
into MLflow, TensorBoard and/or Weights & Biases.

The store stays the record (train_steps, scores, retention); trackers are views a researcher already
knows how to browse. One tracker run per trained (model, method, seed, dataset), named
``<experiment>/<model>/<method>/seed<N>/<dataset>`` and tagged with the train artifact's store key, so
the scores measured later (evaluate, analyze) reopen the same run by that key. A cached training that
a tracker has never seen is replayed into it from its `train_steps` table.

Tracking is a side channel: it never enters an artifact key, and a tracker that fails (not reachable,
disk full, a library bug) is dropped with one warning while training goes on.

Where each backend writes (defaults under the store, each with an override):

| backend | default | override |
|---|---|---|
| mlflow | ``sqlite:///<store>/tracking/mlflow/mlflow.db`` (artifacts beside it) | ``MLFLOW_TRACKING_URI`` |
| tensorboard | ``<store>/tracking/tensorboard/<run name>/<key[:8]>`` | ``UNISD_TENSORBOARD_DIR`` (the root) |
| wandb | ``<store>/tracking/wandb``, ``WANDB_MODE=offline`` | ``WANDB_DIR``, ``WANDB_MODE``, ``WANDB_PROJECT`` |
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

log = logging.getLogger(__name__)

BACKENDS = ("mlflow", "tensorboard", "wandb")
INSTALL_HINT = "pip install 'unisd[tracking]'"
STEP_FIELDS = ("loss", "lr", "tokens_per_s", "step_seconds", "peak_mem_mb")
"""Top-level train_steps columns logged beside the `metrics` map, as ``train/<name>``."""


def check_backends(names: Iterable[str], field_name: str = "tracking") -> None:
    """Raise ValueError (one line) for an unknown tracker name or one whose library is not installed."""
    seen: set[str] = set()
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"{field_name}: unknown tracker {name!r} (known: {', '.join(BACKENDS)})")
        if name in seen:
            raise ValueError(f"{field_name}: {name!r} is listed twice")
        seen.add(name)
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"{field_name}: {name} is not installed ({INSTALL_HINT})")


def run_name(experiment: str, model: str, method: str, seed: int, dataset: str) -> str:
    """The tracker run name a user searches for: ``<experiment>/<model>/<method>/seed<N>/<dataset>``."""
    return f"{experiment}/{model}/{method}/seed{seed}/{dataset}"


@dataclass(frozen=True)
class TrackingRun:
    """What identifies one tracker run and what it is told up front; the store key is given on open."""

    backends: tuple[str, ...]
    root: Path
    """Default home of every backend's files (``<store>/tracking``)."""
    experiment: str
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    """The resolved configuration of the run (logged as params / config / text)."""


@runtime_checkable
class MetricLogger(Protocol):
    """One backend's handle on one tracker run."""

    backend: str
    existed: bool
    """The run was already there when it was opened (a resumed or reopened run)."""

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None: ...

    def close(self) -> None: ...


Opener = Callable[[TrackingRun, str, bool], MetricLogger]


class Tracker:
    """Fan-out over the backends of one run. Every call is guarded: the first failure of a backend is
    logged as one warning and the backend is dropped; nothing a tracker does stops the caller."""

    def __init__(self, loggers: list[MetricLogger]) -> None:
        self.loggers = list(loggers)
        self.logged_steps: set[int] = set()

    def _each(self, what: str, fn: Callable[[MetricLogger], None], only: Iterable[MetricLogger] | None = None) -> None:
        for logger in list(only if only is not None else self.loggers):
            try:
                fn(logger)
            except Exception as e:  # noqa: BLE001 - a tracker never stops training
                _warn(logger.backend, what, e)
                if logger in self.loggers:
                    self.loggers.remove(logger)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._each("log_config", lambda lg: lg.log_config(config))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: f for k, v in metrics.items() if (f := _number(v)) is not None}
        if clean:
            self._each("log_metrics", lambda lg: lg.log_metrics(clean, step))

    def on_step(self, step: int, row: Mapping[str, Any], _student: object = None) -> None:
        """The train loop's per-step callback: log the step's train_steps row."""
        self.log_metrics(step_metrics(row), step)
        self.logged_steps.add(step)

    def replay(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Log stored train_steps rows to the backends that had never seen this run; returns rows sent."""
        fresh = [lg for lg in self.loggers if not lg.existed]
        sent = 0
        for row in sorted(rows, key=lambda r: r["step"]):
            if row["step"] in self.logged_steps or not fresh:
                continue
            metrics, step = step_metrics(row), int(row["step"])
            self._each("log_metrics", lambda lg, m=metrics, s=step: lg.log_metrics(m, s), only=fresh)
            fresh = [lg for lg in fresh if lg in self.loggers]
            sent += 1
        return sent

    def close(self) -> None:
        self._each("close", lambda lg: lg.close())
        self.loggers = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _number(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _warn(backend: str, what: str, error: Exception) -> None:
    """One line per failed backend (the caller drops it, so it cannot warn twice for a run)."""
    text = " ".join(str(error).split())[:300] or type(error).__name__
    log.warning("tracking: %s failed in %s (%s: %s); this run goes on without it",
                backend, what, type(error).__name__, text)


def openers() -> dict[str, Opener]:
    from storage.tracking import backends

    return {"mlflow": backends.MLflowLogger, "tensorboard": backends.TensorBoardLogger,
            "wandb": backends.WandbLogger}


def open_tracker(run: TrackingRun, key: str, *, fresh: bool = False,
                 extra: Mapping[str, Opener] | None = None) -> Tracker:
    """Open (or reopen, by store `key`) the run in every backend; log the config to new runs.

    ``fresh`` starts a new run even if one with this key exists (a forced recomputation). Only the
    main process of a multi-process launch tracks (``RANK`` unset or 0). ``extra`` adds openers by name
    (a backend of the caller's own)."""
    if os.environ.get("RANK", "0") != "0":
        return Tracker([])
    table = {**openers(), **(extra or {})}
    loggers: list[MetricLogger] = []
    for name in run.backends:
        try:
            loggers.append(table[name](run, key, fresh))
        except Exception as e:  # noqa: BLE001 - an unreachable tracker is a warning, not a failed run
            _warn(name, "open", e)
    tracker = Tracker(loggers)
    config = {**run.config, "store_key": key}
    tracker._each("log_config", lambda lg: lg.log_config(config), only=[lg for lg in loggers if not lg.existed])
    return tracker


def step_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """A train_steps row as flat tracker metrics: its `metrics` map plus ``train/<column>``."""
    metrics = row.get("metrics") or {}
    out = dict(metrics.items() if isinstance(metrics, Mapping) else metrics)  # Arrow maps read as pairs
    out.update({f"train/{name}": row[name] for name in STEP_FIELDS if row.get(name) is not None})
    return out


def score_metrics(rows: Iterable[Mapping[str, Any]], z: float) -> dict[str, float]:
    """`scores` rows as ``eval/<dataset>/<metric>`` plus ``_ci_low``/``_ci_high`` (normal, ±z·stderr) and n."""
    out: dict[str, float] = {}
    for r in rows:
        base = f"eval/{r['dataset']}/{r['metric']}"
        out[base] = r["value"]
        out[f"eval/{r['dataset']}/n"] = r["n"]
        if r.get("stderr") is not None:
            out[f"{base}_ci_low"] = r["value"] - z * r["stderr"]
            out[f"{base}_ci_high"] = r["value"] + z * r["stderr"]
    return out


RETENTION_COLUMNS = ("ppl_fit", "ppl_ret", "base_logp", "jsd")


def retention_metrics(rows: Iterable[Mapping[str, Any]], z: float) -> dict[str, float]:
    """`retention` rows as per-dataset means ``retention/<dataset>/<column>`` with normal CIs."""
    by_dataset: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_dataset.setdefault(r["dataset"], []).append(r)
    out: dict[str, float] = {}
    for dataset, group in by_dataset.items():
        out[f"retention/{dataset}/n"] = len(group)
        for col in RETENTION_COLUMNS:
            values = [float(r[col]) for r in group if r.get(col) is not None and math.isfinite(float(r[col]))]
            if not values:
                continue
            mean = sum(values) / len(values)
            base = f"retention/{dataset}/{col}"
            out[base] = mean
            if len(values) > 1:
                sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                out[f"{base}_ci_low"] = mean - z * sd / math.sqrt(len(values))
                out[f"{base}_ci_high"] = mean + z * sd / math.sqrt(len(values))
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.lr": "0.0001", ...}`` (lists as their text), for flat param stores."""
    out: dict[str, str] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{name}."))
        else:
            out[name] = str(v)
    return out


__all__ = [
    "BACKENDS", "MetricLogger", "Tracker", "TrackingRun", "check_backends", "flatten", "open_tracker",
    "retention_metrics", "run_name", "score_metrics", "step_metrics",
]

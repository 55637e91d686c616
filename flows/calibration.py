"""Prefect wiring of the calibration phase: every method × grid point × calibration seed is trained and
scored on the validation split, then the `calibrate` stage picks each method's point (`stages.calibrate`).

The phase is a list of jobs (`jobs`), each one training with its validation scoring (`validate`) or the
base model's validation scoring; the flow may fan them out (`flows.fanout`) before it collects them here.
The final runs reuse a calibration checkpoint whenever the chosen point and a study seed coincide (the
train key is the same), so calibrating with seed 0 and studying seeds 0, 1, 2 trains only two more
runs per method. Nothing here reads the test split.
"""

from __future__ import annotations

from collections.abc import Callable

from stages.calibrate import chosen_points, point_label
from storage import Store
from unisd.config import ExperimentConfig

VALIDATION = "validation"


def jobs(exp: ExperimentConfig, splits: dict[str, set[str]]) -> list[dict]:
    """The phase's jobs in order: per dataset with a train split, the base model (if it is a method),
    then every method × grid point × calibration seed. ``splits``: each dataset's splits."""
    cal, out = exp.calibrate, []
    for name, names in splits.items():
        if "train" not in names:
            continue
        if VALIDATION not in names:
            raise ValueError(f"calibrate: dataset {name!r} has no validation split (set its validation_fraction "
                             "above 0, or map a native split to validation)")
        if "base" in exp.methods:
            out.append({"kind": "validate_base", "dataset": name})
        for method in (m for m in exp.methods if m != "base"):
            tcfg = exp.method_config(method)
            if tcfg.datasets and name not in tcfg.datasets:
                continue
            out += [{"kind": "validate", "dataset": name, "method": method, "seed": seed, "point": point}
                    for point in cal.points() for seed in cal.seeds]
    return out


def validate_base(run: Callable, exp: ExperimentConfig, name: str, examples) -> tuple[str, str]:
    """The base model's validation scores on dataset `name`."""
    return run("evaluate", f"base-{name}-validation", method="base", split=VALIDATION, limit=exp.calibrate.limit,
               inputs={"examples": examples})


def validate(run: Callable, exp: ExperimentConfig, train: Callable, name: str, examples, method: str, seed: int,
             point: dict) -> tuple[str, str]:
    """Train `method` at grid `point` with `seed` and score the checkpoint on the validation split;
    ``train(tcfg, method, seed, name, examples_ref, point)`` submits the training (the flow's `_train`)."""
    ckpt = train(exp.run_config(method, seed, point), method, seed, name, examples, point)
    label = f"{method}-s{seed}-{name}-{point_label(point)}-validation"
    return run("evaluate", label, method=method, seed=seed, trained_on=name, split=VALIDATION,
               limit=exp.calibrate.limit, inputs={"examples": examples, "checkpoint": ckpt})


def calibrate(run: Callable, store: Store, exp: ExperimentConfig, done: list[tuple[dict, tuple[str, str]]]
              ) -> tuple[tuple[str, str] | None, dict[tuple[str, str], dict]]:
    """The calibrate artifact over the phase's finished jobs ``done`` ((job, validation evaluate ref), in
    `jobs` order) and the chosen points, (dataset, method) -> point."""
    if not done:
        return None, {}
    labels = [["base", "", None] if job["kind"] == "validate_base"
              else [job["method"], point_label(job["point"]), job["seed"]] for job, _ in done]
    ref = run("calibrate", exp.name, runs=labels, inputs={f"evaluate_{i}": ev for i, (_, ev) in enumerate(done)})
    return ref, chosen_points(store.get(*ref).table("calibration"), exp.calibrate.points())

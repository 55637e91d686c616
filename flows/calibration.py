"""Prefect wiring of the calibration phase: every method × grid point × calibration seed is trained and
scored on the validation split, then the `calibrate` stage picks each method's point (`stages.calibrate`).

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


def calibrate(run: Callable, store: Store, exp: ExperimentConfig, examples: dict, splits: dict[str, set[str]],
              train: Callable) -> tuple[tuple[str, str] | None, dict[tuple[str, str], dict]]:
    """Train and validate every grid point; returns the calibrate artifact ref and the chosen points,
    (dataset, method) -> point. ``splits``: each dataset's splits (read once by the flow);
    ``train(tcfg, method, seed, name, examples_ref, point)`` submits one training (the flow's `_train`)."""
    cal = exp.calibrate
    points = cal.points()
    evaluations, labels = [], []
    for name, ref in examples.items():
        if "train" not in splits[name]:
            continue
        if VALIDATION not in splits[name]:
            raise ValueError(f"calibrate: dataset {name!r} has no validation split (set its validation_fraction "
                             "above 0, or map a native split to validation)")
        if "base" in exp.methods:
            evaluations.append(run("evaluate", f"base-{name}-validation", method="base", split=VALIDATION,
                                   limit=cal.limit, inputs={"examples": ref}))
            labels.append(["base", "", None])
        for method in (m for m in exp.methods if m != "base"):
            tcfg = exp.method_config(method)
            if tcfg.datasets and name not in tcfg.datasets:
                continue
            for point in points:
                for seed in cal.seeds:
                    ckpt = train(exp.run_config(method, seed, point), method, seed, name, ref, point)
                    tag = {"method": method, "seed": seed, "trained_on": name}
                    label = f"{method}-s{seed}-{name}-{point_label(point)}-validation"
                    evaluations.append(run("evaluate", label, **tag, split=VALIDATION, limit=cal.limit,
                                           inputs={"examples": ref, "checkpoint": ckpt}))
                    labels.append([method, point_label(point), seed])
    if not evaluations:
        return None, {}
    ref = run("calibrate", exp.name, runs=labels,
              inputs={f"evaluate_{i}": ev for i, ev in enumerate(evaluations)})
    return ref, chosen_points(store.get(*ref).table("calibration"), points)

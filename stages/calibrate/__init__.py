"""Calibration: choose each method's training setting on the validation split, never on test.

A `calibrate.grid` maps dotted training keys (``lr``, ``steps``, ``lora.r``, ...) to candidate values.
Every method is trained at every point of the grid (the cartesian product, in the order written) for
each calibration seed, under the same training budget (`train.steps` × `train.batch_size`, unless the
grid itself varies them, for every method alike), and evaluated on the validation split. This module
is the pure part: the grid's points, the overlay of a point on a method's training config, and the
choice, written as the `calibration` table (one row per method × point, the chosen one flagged).

The choice: the highest mean validation score over the calibration seeds; ties go to the point listed
first in the grid, so the order of the grid is the documented preference (write the conservative value
first). The study then trains each method at its chosen point for every seed and evaluates on test.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

import schemas

SPEC_VERSION = 1


@dataclass(frozen=True)
class CalibrateConfig:
    """Per-method hyperparameter choice on the validation split before the final (test) runs."""

    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Dotted training key -> candidate values, e.g. {lr: [1.0e-4, 3.0e-4]} (empty = no calibration:
    every method trains with its preset as is). Ties in validation score go to the value listed first."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds of the calibration runs (a chosen point's run at a seed the study also uses is
    reused as it is, not trained twice)."""
    limit: int | None = None
    """Validation examples per dataset used to score a point (None = the whole validation split)."""
    only: bool = False
    """Stop after the calibration (its table and report); the final test runs are not started."""

    def __post_init__(self) -> None:
        grid = {}
        for key, values in dict(self.grid).items():
            vals = tuple(values) if isinstance(values, list | tuple) else (values,)
            if not vals:
                raise ValueError(f"calibrate.grid.{key}: needs at least one value")
            if len(set(map(repr, vals))) != len(vals):
                raise ValueError(f"calibrate.grid.{key}: a value is listed twice")
            grid[str(key)] = vals
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise ValueError("calibrate.seeds: at least one seed is required")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("calibrate.seeds: a seed is listed twice")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"calibrate.limit: must be >= 1 or null, got {self.limit}")

    @property
    def enabled(self) -> bool:
        return bool(self.grid)

    def points(self) -> list[dict[str, Any]]:
        """The grid's points in order: the cartesian product, first key varying slowest."""
        keys = list(self.grid)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(self.grid[k] for k in keys))]


def overlay(train: Mapping[str, Any], point: Mapping[str, Any]) -> dict[str, Any]:
    """``train`` (a nested dict) with each dotted key of ``point`` set; an unknown key is an error."""
    out = json.loads(json.dumps(train))
    for dotted, value in point.items():
        node, parts = out, dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"calibrate.grid.{dotted}: no training setting "
                                 f"{'.'.join(parts[:i + 1])!r} (keys are relative to train, e.g. lr, lora.r)")
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return out


def point_label(point: Mapping[str, Any]) -> str:
    """A stable, readable label of a grid point: ``lr=0.0003,steps=16``."""
    return ",".join(f"{k}={v}" for k, v in point.items())


def choose(rows: Iterable[Mapping[str, Any]], points: list[dict[str, Any]]) -> pa.Table:
    """The `calibration` table from validation scores.

    ``rows``: one per (dataset, method, point label, seed) with the primary metric's ``value`` and its
    ``n``. Per (dataset, method) the point with the highest mean over seeds is chosen (ties: the first
    in ``points``). Base rows (method "base", point "") are kept as the reference and never chosen."""
    order = {point_label(p): i for i, p in enumerate(points)}
    groups: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"], r["point"], r["metric"]), []).append(r)
    out = []
    for (dataset, method, point, metric), rs in groups.items():
        values = [float(r["value"]) for r in rs]
        out.append(dict(dataset=dataset, method=method, point=point, metric=metric,
                        value=sum(values) / len(values), seeds=len(rs), n=int(rs[0]["n"]), chosen=False,
                        split="validation", rank=order.get(point, -1)))
    best: dict[tuple[str, str], dict] = {}
    for row in out:
        if row["method"] == "base":
            continue
        k = (row["dataset"], row["method"])
        cur = best.get(k)
        if cur is None or (row["value"], -row["rank"]) > (cur["value"], -cur["rank"]):
            best[k] = row
    for row in best.values():
        row["chosen"] = True
    out.sort(key=lambda r: (r["dataset"], r["method"] != "base", r["method"], r["rank"]))
    for row in out:
        del row["rank"]
    return schemas.conform(out, schemas.CALIBRATION)


def chosen_points(table: pa.Table, points: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(dataset, method) -> the chosen grid point, read back from a `calibration` table."""
    by_label = {point_label(p): p for p in points}
    return {(r["dataset"], r["method"]): by_label[r["point"]] for r in table.to_pylist() if r["chosen"]}

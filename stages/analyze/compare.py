"""Paired comparisons between evaluated runs, example by example (the `comparisons` table).

Runs are grouped by (evaluated dataset, dataset trained on); within a group every method is compared
with each baseline (the configured one, e.g. SFT, and the base model) on the examples both answered:

* ``accuracy_diff``: mean over examples of (method correct − baseline correct), each example's value
  first averaged over the seeds the two share (the base model has one run, paired with every seed).
  CI: bootstrap over examples; p: two-sided paired sign-flip test on the per-example differences.
* ``jsd_lower``: share of examples where the method's JSD to the base model is lower than the
  baseline's (ties count ½), per-example JSD averaged over seeds; CI: bootstrap over examples.
* ``accuracy_mde``: the minimum detectable effect of that paired test (80% power at the confidence
  level) from the spread of the per-example differences: how small a difference this many items resolve.
* ``base_logp_higher``: share of examples where the base model gives the method's completion a higher
  mean log-prob than the baseline's (ties ½); same CI.

The retention statistics need both runs' `retention` rows, so they are skipped against the base model
(its JSD to itself is 0 and its completions are its own).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

import schemas
from objectives.stats import bootstrap_ci, paired_bootstrap_diff, sign_flip_pvalue, win_scores

BASE = "base"


def group_label(dataset: str, trained_on: str | None) -> str:
    """The dataset column label of a run (Table 1, comparisons): the evaluated dataset, or
    ``"{trained_on}→{dataset}"`` for an out-of-distribution evaluation."""
    return dataset if trained_on in (None, dataset) else f"{trained_on}→{dataset}"


def _per_example(rows: Iterable[dict], field: str) -> dict[tuple[str, str], dict[int | None, dict[str, float]]]:
    """{(group, method): {seed: {id: value}}} of one per-example field."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        value = r[field]
        if value is None:
            continue
        out[(r["_group"], r["method"])][r["seed"]][r["id"]] = float(value)
    return out


def _with_groups(tables: Iterable[pa.Table]) -> list[dict]:
    rows = [r for t in tables for r in t.to_pylist()]
    for r in rows:
        r["_group"] = group_label(r["dataset"], r.get("trained_on"))
    return rows


def _paired(method: dict[int | None, dict[str, float]], baseline: dict[int | None, dict[str, float]]
            ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-example values of two runs averaged over shared seeds (the base model's single run pairs
    with every seed): (ids, method values, baseline values)."""
    seeds = [s for s in method if s in baseline] or ([s for s in method] if None in baseline else [])
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for s in seeds:
        other = baseline[s] if s in baseline else baseline[None]
        for i, v in method[s].items():
            if i in other:
                acc = sums[i]
                acc[0] += v
                acc[1] += other[i]
                acc[2] += 1
    ids = sorted(sums)
    a = np.array([sums[i][0] / sums[i][2] for i in ids], dtype=float)
    b = np.array([sums[i][1] / sums[i][2] for i in ids], dtype=float)
    return ids, a, b


def compare(predictions: Iterable[pa.Table], retention: Iterable[pa.Table], *, baseline: str = "sft",
            n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> pa.Table:
    """The `comparisons` table of every method against `baseline` and the base model."""
    preds = [r for r in _with_groups(predictions) if r["sample"] == 0]
    correct = _per_example(({**r, "correct": float(r["correct"])} for r in preds), "correct")
    ret = _with_groups(retention)
    jsd, base_logp = _per_example(ret, "jsd"), _per_example(ret, "base_logp")
    methods_by_group: dict[str, set[str]] = defaultdict(set)
    for group, method in correct:
        methods_by_group[group].add(method)
    for group in list(methods_by_group):  # a transfer column pairs with the base run of its dataset
        evaluated = group.split("→")[-1]
        if evaluated != group and (evaluated, BASE) in correct:
            correct[(group, BASE)] = correct[(evaluated, BASE)]
            methods_by_group[group].add(BASE)
    kw = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    out = []
    for group in sorted(methods_by_group):
        methods = methods_by_group[group]
        for method in sorted(methods - {BASE}):
            for base in (b for b in dict.fromkeys((baseline, BASE)) if b in methods and b != method):
                ids, a, b = _paired(correct[(group, method)], correct[(group, base)])
                if not ids:
                    continue
                diff, lo, hi = paired_bootstrap_diff(a, b, **kw)
                out.append(_row(group, method, base, "accuracy_diff", diff, lo, hi,
                                sign_flip_pvalue(a - b, seed=seed), len(ids)))
                out.append(_row(group, method, base, "accuracy_mde", minimum_detectable_effect(a - b, confidence),
                                None, None, None, len(ids)))
                if base == BASE:
                    continue
                for stat, values, lower in (("jsd_lower", jsd, True), ("base_logp_higher", base_logp, False)):
                    if (group, method) not in values or (group, base) not in values:
                        continue
                    ids, a, b = _paired(values[(group, method)], values[(group, base)])
                    if not ids:
                        continue
                    point, lo, hi = bootstrap_ci(win_scores(a, b, lower_is_better=lower), **kw)
                    out.append(_row(group, method, base, stat, point, lo, hi, None, len(ids)))
    return schemas.conform(out, schemas.COMPARISONS)


def minimum_detectable_effect(diffs: np.ndarray, confidence: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired test at ``confidence`` detects with
    probability ``power``, given these per-example differences: (z_{1-α/2} + z_power) · sd(d) / √n
    (normal approximation; nan with fewer than 2 examples)."""
    from statistics import NormalDist

    n = len(diffs)
    if n < 2:
        return float("nan")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2) + NormalDist().inv_cdf(power)
    return float(z * np.std(diffs, ddof=1) / np.sqrt(n))


def _row(dataset, method, baseline, statistic, value, lo, hi, p, n) -> dict:
    return {"dataset": dataset, "method": method, "baseline": baseline, "statistic": statistic,
            "value": float(value), "ci_low": None if lo is None else float(lo),
            "ci_high": None if hi is None else float(hi),
            "p_value": None if p is None else float(p), "n": int(n)}

"""Paired comparisons between runs: hand-computed values on small tables."""

from __future__ import annotations

import pytest

import schemas
from stages.analyze.compare import compare, group_label

IDS = ["a", "b", "c", "d"]


def _preds(method, seed, correct, dataset="ds", trained_on="ds"):
    if method == "base":
        trained_on = None
    return schemas.conform([{"id": i, "dataset": dataset, "model": "m", "method": method, "sample": 0,
                             "prompt_tokens": 1, "completion": "x", "correct": bool(c), "score": float(c),
                             "latency": 0.0, "truncated": False, "seed": seed, "trained_on": trained_on}
                            for i, c in zip(IDS, correct)], schemas.PREDICTIONS)


def _ret(method, seed, jsd, logp, dataset="ds", trained_on="ds"):
    if method == "base":
        trained_on = None
    return schemas.conform([{"id": i, "dataset": dataset, "method": method, "seed": seed, "trained_on": trained_on,
                             "ppl_fit": 2.0, "ppl_ret": 2.0, "base_logp": lp, "jsd": j, "num_tokens": 3}
                            for i, j, lp in zip(IDS, jsd, logp)], schemas.RETENTION)


def _stats(table):
    return {(r["dataset"], r["method"], r["baseline"], r["statistic"]): r for r in table.to_pylist()}


def test_values_against_hand_computation():
    preds = [_preds("base", None, [0, 0, 1, 0]),
             _preds("sft", 0, [1, 0, 0, 0]), _preds("sft", 1, [1, 1, 0, 0]),
             _preds("sd", 0, [1, 1, 1, 0]), _preds("sd", 1, [1, 1, 0, 1])]
    ret = [_ret("base", None, [0] * 4, [-1] * 4),
           _ret("sft", 0, [0.2, 0.2, 0.2, 0.2], [-2, -2, -2, -2]), _ret("sft", 1, [0.2, 0.2, 0.2, 0.2], [-2, -2, -2, -2]),
           _ret("sd", 0, [0.1, 0.3, 0.2, 0.1], [-1, -3, -2, -1]), _ret("sd", 1, [0.1, 0.3, 0.2, 0.3], [-1, -3, -2, -3])]
    s = _stats(compare(preds, ret, baseline="sft", n_resamples=500))
    # per-example means over seeds: sd (1, 1, .5, .5), sft (1, .5, 0, 0), base (0, 0, 1, 0)
    assert s[("ds", "sd", "sft", "accuracy_diff")]["value"] == pytest.approx((0 + 0.5 + 0.5 + 0.5) / 4)
    assert s[("ds", "sd", "base", "accuracy_diff")]["value"] == pytest.approx((1 + 1 - 0.5 + 0.5) / 4)
    assert s[("ds", "sft", "base", "accuracy_diff")]["value"] == pytest.approx((1 + 0.5 - 1 + 0) / 4)
    # sd JSD per example (.1, .3, .2, .2) vs sft .2: lower, higher, tie, tie -> (1 + 0 + .5 + .5) / 4
    assert s[("ds", "sd", "sft", "jsd_lower")]["value"] == pytest.approx(0.5)
    # base log p of sd's completions (-1, -3, -2, -2) vs sft's -2 -> same pattern
    assert s[("ds", "sd", "sft", "base_logp_higher")]["value"] == pytest.approx(0.5)
    row = s[("ds", "sd", "sft", "accuracy_diff")]
    assert row["n"] == 4 and row["ci_low"] <= row["value"] <= row["ci_high"] and 0 < row["p_value"] <= 1
    assert ("ds", "sd", "base", "jsd_lower") not in s  # retention statistics need both runs' retention rows
    assert ("ds", "sft", "sft", "accuracy_diff") not in s
    schemas.validate(compare(preds, ret, baseline="sft"), schemas.COMPARISONS)


def test_transfer_runs_pair_with_the_base_run_of_the_evaluated_dataset():
    preds = [_preds("base", None, [0, 0, 0, 0], dataset="gpqa"),
             _preds("sd", 0, [1, 1, 0, 0], dataset="gpqa", trained_on="sciq")]
    s = _stats(compare(preds, [], baseline="sft", n_resamples=200))
    assert group_label("gpqa", "sciq") == "sciq→gpqa" and group_label("gpqa", "gpqa") == "gpqa"
    assert s[("sciq→gpqa", "sd", "base", "accuracy_diff")]["value"] == pytest.approx(0.5)


def test_a_clear_gain_is_significant_and_no_gain_is_not():
    ids = [f"q{i}" for i in range(40)]

    def preds(method, correct):
        return schemas.conform([{"id": i, "dataset": "ds", "model": "m", "method": method, "sample": 0,
                                 "prompt_tokens": 1, "completion": "x", "correct": c, "score": float(c),
                                 "latency": 0.0, "truncated": False, "seed": None if method == "base" else 0,
                                 "trained_on": None if method == "base" else "ds"}
                                for i, c in zip(ids, correct)], schemas.PREDICTIONS)

    base = preds("base", [i % 4 == 0 for i in range(40)])
    better = preds("sd", [i % 4 != 3 for i in range(40)])
    same = preds("sft", [i % 4 == 0 for i in range(40)])
    s = _stats(compare([base, better, same], [], baseline="none", n_resamples=500))
    assert s[("ds", "sd", "base", "accuracy_diff")]["p_value"] < 0.01
    assert s[("ds", "sft", "base", "accuracy_diff")]["p_value"] == 1.0


def test_minimum_detectable_effect_closed_form_and_shrinks_with_n():
    from statistics import NormalDist

    import numpy as np

    from stages.analyze.compare import minimum_detectable_effect

    d = np.array([1.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    assert minimum_detectable_effect(d) == pytest.approx(z * d.std(ddof=1) / np.sqrt(len(d)))
    assert minimum_detectable_effect(np.tile(d, 4)) < minimum_detectable_effect(d) / 1.9  # ~1/sqrt(4)
    assert np.isnan(minimum_detectable_effect(np.array([1.0])))

"""Analysis statistics: t intervals, bootstrap CIs (plain, paired, cluster), McNemar, wins, sign flips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

import objectives.stats as st
from objectives.stats import (
    bootstrap_ci,
    mcnemar_exact,
    mean_ci,
    paired_bootstrap_diff,
    sign_flip_pvalue,
    win_fraction,
)


@pytest.mark.parametrize(("n", "confidence"), [(3, 0.95), (5, 0.9), (12, 0.99)])
def test_mean_ci_matches_scipy_t_interval(n: int, confidence: float) -> None:
    values = np.random.default_rng(n).normal(1.5, 2.0, size=n)
    mean, half = mean_ci(values, confidence)
    low, high = sps.t.interval(confidence, n - 1, loc=values.mean(), scale=sps.sem(values))
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert mean - half == pytest.approx(low, rel=1e-10)
    assert mean + half == pytest.approx(high, rel=1e-10)


def test_mean_ci_two_values_closed_form() -> None:
    # n = 2: s/√n = |x1 − x2| / 2 and the t quantile with 1 df is tan(π (p − ½)), p = 0.975.
    mean, half = mean_ci([1.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(math.tan(math.pi * 0.475) * 3.0 / 2.0, rel=1e-10)


def test_mean_ci_single_value_and_bad_inputs() -> None:
    mean, half = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(half)
    with pytest.raises(ValueError, match="values is empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence must be in"):
        mean_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="must be 1-D"):
        mean_ci([[1.0, 2.0]])


def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    point_s, low_s, high_s = bootstrap_ci(small)
    point_l, low_l, high_l = bootstrap_ci(large)
    assert point_s == pytest.approx(small.mean()) and point_l == pytest.approx(large.mean())
    assert low_s < point_s < high_s and low_l < point_l < high_l
    assert high_l - low_l < 0.3 * (high_s - low_s)  # width shrinks like 1/√n: ratio ≈ 0.1
    # For the mean of N(0, 1), the 95% half-width is about 1.96/√n.
    assert (high_l - low_l) / 2 == pytest.approx(1.96 / math.sqrt(2000), rel=0.15)


def test_bootstrap_ci_is_deterministic_and_seed_dependent() -> None:
    values = np.random.default_rng(1).exponential(size=50)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_ci_does_not_depend_on_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(2).normal(size=37)
    expected = bootstrap_ci(values, np.median, n_resamples=500, seed=5)
    monkeypatch.setattr(st, "_MAX_CHUNK_ELEMENTS", 37 * 7)  # 7 resamples per chunk, ragged last chunk
    assert bootstrap_ci(values, np.median, n_resamples=500, seed=5) == expected


def test_bootstrap_ci_of_constant_is_degenerate_and_custom_statistic() -> None:
    assert bootstrap_ci(np.full(10, 2.5)) == (2.5, 2.5, 2.5)
    values = np.arange(11.0)
    point, low, high = bootstrap_ci(values, np.median)
    assert point == 5.0 and low <= 5.0 <= high and low >= 0.0 and high <= 10.0


def test_bootstrap_ci_bad_inputs() -> None:
    with pytest.raises(ValueError, match="values is empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="n_resamples must be >= 1"):
        bootstrap_ci([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_paired_diff_of_identical_arrays_is_zero() -> None:
    a = np.random.default_rng(3).normal(size=40)
    assert paired_bootstrap_diff(a, a.copy()) == (0.0, 0.0, 0.0)
    assert paired_bootstrap_diff(a, a.copy(), groups=np.arange(40) % 7) == (0.0, 0.0, 0.0)


def test_paired_diff_estimate_and_rows_equal_singleton_groups() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.5, 1.0, size=60), rng.normal(0.0, 1.0, size=60)
    point, low, high = paired_bootstrap_diff(a, b, seed=9)
    assert point == pytest.approx((a - b).mean(), rel=1e-12) and low < point < high
    # One row per group: the cluster bootstrap draws the same indices, so it is the row bootstrap.
    clustered = paired_bootstrap_diff(a, b, seed=9, groups=np.arange(60))
    assert clustered == pytest.approx((point, low, high), rel=1e-12)


def test_cluster_bootstrap_is_wider_when_rows_repeat_a_group() -> None:
    # 30 examples scored under 4 seeds with identical per-example differences: only 30 independent units.
    per_example = np.random.default_rng(5).normal(size=30)
    diffs = np.repeat(per_example, 4)
    example_id = np.repeat(np.arange(30), 4)
    zeros = np.zeros_like(diffs)
    point_r, low_r, high_r = paired_bootstrap_diff(diffs, zeros)
    point_c, low_c, high_c = paired_bootstrap_diff(diffs, zeros, groups=example_id)
    assert point_r == point_c == pytest.approx(per_example.mean())
    assert high_c - low_c >= high_r - low_r
    assert (high_c - low_c) / (high_r - low_r) == pytest.approx(2.0, rel=0.25)  # √4 from the repeats
    # Clustering by example reproduces the bootstrap over the 30 distinct examples.
    _, low_e, high_e = paired_bootstrap_diff(per_example, np.zeros(30))
    assert (high_c - low_c) == pytest.approx(high_e - low_e, rel=0.2)


def test_cluster_bootstrap_weights_unequal_group_sizes() -> None:
    # Two groups, sizes 1 and 3: the estimate of every resample is a row-weighted mean of the drawn groups.
    diffs = np.array([4.0, 0.0, 0.0, 0.0])
    point, low, high = paired_bootstrap_diff(
        diffs, np.zeros(4), groups=["x", "y", "y", "y"], n_resamples=4000
    )
    assert point == 1.0
    assert low == 0.0 and high == 4.0  # resamples {y, y}: 0, {x, y}: 1, {x, x}: 4, each with prob ≥ 1/4


def test_paired_diff_bad_inputs() -> None:
    with pytest.raises(ValueError, match="a has 3, b has 2"):
        paired_bootstrap_diff([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="a has 2, groups has 3"):
        paired_bootstrap_diff([1.0, 2.0], [1.0, 2.0], groups=[0, 0, 1])
    with pytest.raises(ValueError, match="a - b is empty"):
        paired_bootstrap_diff([], [])
    with pytest.raises(ValueError, match="b contains NaN"):
        paired_bootstrap_diff([1.0, 2.0], [1.0, float("nan")])


def _outcomes(b01: int, b10: int, concordant: int = 5) -> tuple[np.ndarray, np.ndarray]:
    a = [False] * b01 + [True] * b10 + [True, False] * concordant
    b = [True] * b01 + [False] * b10 + [True, False] * concordant
    order = np.random.default_rng(b01 * 100 + b10).permutation(len(a))
    return np.array(a)[order], np.array(b)[order]


@pytest.mark.parametrize(("b01", "b10"), [(0, 3), (1, 9), (4, 4), (5, 6), (12, 3), (20, 41), (0, 1)])
def test_mcnemar_matches_scipy_binomtest(b01: int, b10: int) -> None:
    a, b = _outcomes(b01, b10)
    got_b01, got_b10, p = mcnemar_exact(a, b)
    assert (got_b01, got_b10) == (b01, b10)
    assert p == pytest.approx(sps.binomtest(b01, b01 + b10, 0.5).pvalue, rel=1e-10)


def test_mcnemar_without_discordant_pairs_and_int_outcomes() -> None:
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == (0, 0, 1.0)
    assert mcnemar_exact([0, 0, 0, 0, 0], [1, 1, 1, 1, 1]) == (5, 0, pytest.approx(2 / 32))
    with pytest.raises(ValueError, match="boolean or 0/1"):
        mcnemar_exact([0, 2], [1, 1])
    with pytest.raises(ValueError, match="a_correct has 2, b_correct has 1"):
        mcnemar_exact([True, False], [True])


def test_win_fraction_closed_forms_ties_and_nan() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 5.0])
    b = np.array([2.0, 2.0, 1.0, 5.0, 0.0, np.nan])
    # Kept pairs: (1,2) win, (2,2) tie, (3,1) loss, (4,5) win -> (2 + 0.5) / 4 for lower-is-better.
    assert win_fraction(a, b) == 0.625
    assert win_fraction(a, b, lower_is_better=False) == 0.375
    assert win_fraction([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert math.isnan(win_fraction([np.nan], [1.0]))
    assert math.isnan(win_fraction([], []))
    with pytest.raises(ValueError, match="a has 2, b has 1"):
        win_fraction([1.0, 2.0], [1.0])


def test_sign_flip_pvalue_shift_vs_symmetric_noise() -> None:
    rng = np.random.default_rng(6)
    shifted = rng.normal(1.0, 1.0, size=50)
    assert sign_flip_pvalue(shifted, n_resamples=5000) == pytest.approx(1 / 5001)
    symmetric = np.concatenate([rng.normal(size=25)] * 2) * np.repeat([1.0, -1.0], 25)
    assert sign_flip_pvalue(symmetric, n_resamples=5000) == 1.0  # sum is 0: every flip is as extreme
    noise = rng.normal(size=50)
    t_p = sps.ttest_1samp(noise, 0.0).pvalue
    assert sign_flip_pvalue(noise, n_resamples=5000) == pytest.approx(t_p, abs=0.05)


def test_sign_flip_pvalue_small_exact_cases() -> None:
    # Five equal positive diffs: only all-plus and all-minus are as extreme, probability 2/32.
    assert sign_flip_pvalue(np.full(5, 0.3), n_resamples=20000) == pytest.approx(1 / 16, abs=0.006)
    assert sign_flip_pvalue([2.0]) == 1.0
    assert sign_flip_pvalue(np.zeros(8)) == 1.0
    assert sign_flip_pvalue([0.5, 1.0, 2.0], seed=1) == sign_flip_pvalue([0.5, 1.0, 2.0], seed=1)


def test_sign_flip_pvalue_bad_inputs() -> None:
    with pytest.raises(ValueError, match="diffs is empty"):
        sign_flip_pvalue([])
    with pytest.raises(ValueError, match="NaN"):
        sign_flip_pvalue([1.0, float("inf")])
    with pytest.raises(ValueError, match="n_resamples must be >= 1"):
        sign_flip_pvalue([1.0], n_resamples=0)


def test_sign_flip_pvalue_does_not_depend_on_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(7).normal(0.2, 1.0, size=13)
    expected = sign_flip_pvalue(values, n_resamples=999)
    monkeypatch.setattr(st, "_MAX_CHUNK_ELEMENTS", 13 * 10)
    assert sign_flip_pvalue(values, n_resamples=999) == expected

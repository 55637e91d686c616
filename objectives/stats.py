"""Statistics for comparing fine-tuning methods: over seeds, and over paired per-example results.

* `mean_ci`: mean over seeds and the half-width of its Student-t confidence interval.
* `bootstrap_ci`: percentile bootstrap CI of any vectorisable statistic.
* `paired_bootstrap_diff`: mean(a − b) over paired examples with a percentile bootstrap CI; with `groups`,
  a cluster bootstrap that resamples whole groups (e.g. one example scored under several seeds).
* `mcnemar_exact`: exact McNemar test on paired correct/incorrect outcomes.
* `win_fraction`: how often a beats b on paired examples, ties counting one half.
* `sign_flip_pvalue`: two-sided paired permutation test of mean(diffs) = 0.

Inputs are 1-D array-likes. Resampling is seeded with `np.random.default_rng(seed)` and drawn in chunks of at
most `_MAX_CHUNK_ELEMENTS` indices, so memory stays bounded for large inputs and, because numpy's integer
stream does not depend on how it is split, results depend only on the seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

__all__ = [
    "bootstrap_ci",
    "mcnemar_exact",
    "mean_ci",
    "paired_bootstrap_diff",
    "sign_flip_pvalue",
    "win_fraction",
    "win_scores",
]

_MAX_CHUNK_ELEMENTS = 1 << 22


def _as_vector(
    values: ArrayLike, name: str, *, allow_empty: bool = False, allow_nan: bool = False
) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not allow_empty and array.size == 0:
        raise ValueError(f"{name} is empty; need at least one value")
    if not allow_nan and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop or impute them first")
    return array


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} has {length}" for name, length in lengths.items())
        raise ValueError(f"paired inputs must have the same length: {described}")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_resamples(n_resamples: int) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def _resampled_statistics(
    n_units: int, n_resamples: int, seed: int, statistic_of_indices: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Statistic of `n_resamples` resamples of `n_units` units, from (rows, n_units) index chunks."""
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _MAX_CHUNK_ELEMENTS // n_units)
    pieces = []
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        pieces.append(np.asarray(statistic_of_indices(rng.integers(0, n_units, size=(rows, n_units)))))
    return np.concatenate(pieces)


def _percentile_interval(resampled: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(resampled, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t CI of the mean: half = t_{(1+c)/2, n−1} · s / √n.

    s is the sample standard deviation (ddof = 1). A single value has no spread estimate: (value, nan).
    """
    _check_confidence(confidence)
    array = _as_vector(values, "values")
    n = array.size
    mean = float(array.mean())
    if n == 1:
        return mean, float("nan")
    half = sps.t.ppf((1.0 + confidence) / 2.0, n - 1) * array.std(ddof=1) / np.sqrt(n)
    return mean, float(half)


def bootstrap_ci(
    values: ArrayLike,
    statistic: Callable[..., ArrayLike] = np.mean,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(statistic(values), low, high): percentile bootstrap CI at the given confidence.

    low/high are the (1 − c)/2 and (1 + c)/2 quantiles of the statistic over `n_resamples` resamples drawn
    with replacement. `statistic` must accept `axis=` like np.mean / np.median: it is called once per chunk
    on a (rows, n) matrix of resamples with axis=1.
    """
    _check_confidence(confidence)
    _check_resamples(n_resamples)
    array = _as_vector(values, "values")
    resampled = _resampled_statistics(
        array.size, n_resamples, seed, lambda idx: statistic(array[idx], axis=1)
    )
    return (float(statistic(array)), *_percentile_interval(resampled, confidence))


def paired_bootstrap_diff(
    a: ArrayLike,
    b: ArrayLike,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[float, float, float]:
    """(mean(a − b), low, high): percentile bootstrap CI of the mean paired difference.

    Without `groups`, rows (examples) are resampled. With `groups` (one label per row, e.g. the example id
    when several seeds score the same example), whole groups are resampled and each resample's estimate is
    Σ_{g∈resample} sum_g / Σ_{g∈resample} count_g, so rows sharing a group stay together (cluster bootstrap).
    """
    _check_confidence(confidence)
    _check_resamples(n_resamples)
    a_arr, b_arr = _as_vector(a, "a", allow_empty=True), _as_vector(b, "b", allow_empty=True)
    _check_same_length(a=a_arr, b=b_arr)
    diffs = _as_vector(a_arr - b_arr, "a - b")
    if groups is None:
        return bootstrap_ci(diffs, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed)
    labels = np.asarray(groups)
    if labels.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {labels.shape}")
    _check_same_length(a=a_arr, groups=labels)
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.bincount(inverse, weights=diffs)
    counts = np.bincount(inverse).astype(np.float64)
    resampled = _resampled_statistics(
        sums.size, n_resamples, seed, lambda idx: sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    )
    return (float(diffs.mean()), *_percentile_interval(resampled, confidence))


def _as_outcomes(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be boolean or 0/1 outcomes")
    return array.astype(bool)


def mcnemar_exact(a_correct: ArrayLike, b_correct: ArrayLike) -> tuple[int, int, float]:
    """(b01, b10, p): exact two-sided McNemar test on paired correctness.

    b01 = #(a wrong, b right), b10 = #(a right, b wrong); under H0, b01 ~ Binomial(b01 + b10, 1/2), so
    p = min(1, 2 · BinomCDF(min(b01, b10); b01 + b10, 1/2)); p = 1 without discordant pairs.
    """
    a_arr, b_arr = _as_outcomes(a_correct, "a_correct"), _as_outcomes(b_correct, "b_correct")
    _check_same_length(a_correct=a_arr, b_correct=b_arr)
    b01 = int(np.count_nonzero(~a_arr & b_arr))
    b10 = int(np.count_nonzero(a_arr & ~b_arr))
    discordant = b01 + b10
    if discordant == 0:
        return b01, b10, 1.0
    return b01, b10, float(min(1.0, 2.0 * sps.binom.cdf(min(b01, b10), discordant, 0.5)))


def win_scores(a: ArrayLike, b: ArrayLike, *, lower_is_better: bool = True) -> np.ndarray:
    """Per paired example: 1 where a is strictly better than b, ½ on a tie, 0 otherwise.

    Pairs with a NaN on either side are dropped first.
    """
    a_arr = _as_vector(a, "a", allow_empty=True, allow_nan=True)
    b_arr = _as_vector(b, "b", allow_empty=True, allow_nan=True)
    _check_same_length(a=a_arr, b=b_arr)
    keep = ~(np.isnan(a_arr) | np.isnan(b_arr))
    a_arr, b_arr = a_arr[keep], b_arr[keep]
    better = a_arr < b_arr if lower_is_better else a_arr > b_arr
    return np.where(a_arr == b_arr, 0.5, better.astype(float))


def win_fraction(a: ArrayLike, b: ArrayLike, *, lower_is_better: bool = True) -> float:
    """(#(a strictly better than b) + ½ · #(a == b)) / n over paired examples: the mean of `win_scores`.

    Pairs with a NaN on either side are dropped first; nan when no pair remains. 0.5 means no preference.
    """
    scores = win_scores(a, b, lower_is_better=lower_is_better)
    return float(scores.mean()) if scores.size else float("nan")


def sign_flip_pvalue(diffs: ArrayLike, *, n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of H0: mean(diffs) = 0 (diffs symmetric about 0).

    Each resample multiplies every diff by an independent random sign s_i = ±1. With T = |Σ diffs| and count
    the number of resamples with |Σ s_i · diffs_i| ≥ T (less a rounding tolerance of 1e-12 · Σ |diffs|),
    p = (count + 1) / (n_resamples + 1), which is never 0. All-zero diffs give p = 1.
    """
    _check_resamples(n_resamples)
    array = _as_vector(diffs, "diffs")
    scale = float(np.abs(array).sum())
    if scale == 0.0:
        return 1.0
    threshold = abs(float(array.sum())) - 1e-12 * scale
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _MAX_CHUNK_ELEMENTS // array.size)
    count = 0
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(rows, array.size))
        count += int(np.count_nonzero(np.abs(signs @ array) >= threshold))
    return (count + 1) / (n_resamples + 1)

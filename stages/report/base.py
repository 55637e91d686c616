"""The base model's own section of the report: what its one number per dataset stands on.

Per dataset, from the base model's ``predictions`` (and the precision its ``scores`` record): how many
completions were scored, the primary score with its confidence interval — Wilson's score interval when
every score is 0 or 1 (it stays inside [0, 1] and is not degenerate at 0 % or 100 %, unlike the normal
interval), else a percentile bootstrap over examples (`objectives.stats.bootstrap_ci`) — the share of
completions an answer could be extracted from, the share cut at ``max_new_tokens``, mean latency, mean
prompt and completion tokens, and the weights' precision. Then a few example predictions per dataset,
correct and wrong, chosen by id order so the same run always shows the same ones.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pyarrow as pa

from objectives.stats import bootstrap_ci

BASE = "base"
HEADER = ["dataset", "n", "score", "CI", "extracted", "truncated", "latency s", "prompt tok", "completion tok",
          "precision"]
EXAMPLE_HEADER = ["dataset", "id", "verdict", "extracted", "completion (start)"]
EXCERPT = 160


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_ci needs 0 <= successes <= n and n >= 1, got {successes}/{n}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, not 1e-17 off
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def score_ci(scores: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Wilson for 0/1 scores, else a percentile bootstrap over examples (seed 0)."""
    if all(s in (0.0, 1.0) for s in scores):
        return wilson_ci(int(sum(scores)), len(scores), confidence)
    _, low, high = bootstrap_ci(scores, confidence=confidence)
    return low, high


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _precision(scores: list[pa.Table]) -> dict[str, str]:
    out: dict[str, set[str]] = {}
    for t in scores:
        if "precision" not in t.column_names:
            continue
        for r in t.to_pylist():
            if r["method"] == BASE and r.get("precision"):
                out.setdefault(r["dataset"], set()).add(r["precision"])
    return {d: ", ".join(sorted(p)) for d, p in out.items()}


def _base_rows(predictions: list[pa.Table]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for t in predictions:
        for r in t.to_pylist():
            if r["method"] == BASE:
                groups.setdefault(r["dataset"], []).append(r)
    return {d: sorted(rs, key=lambda r: (r["id"], r["sample"])) for d, rs in sorted(groups.items())}


def base_table(predictions: list[pa.Table], scores: list[pa.Table], confidence: float = 0.95) -> list[list[str]]:
    """One row per dataset of the base model (see the module docstring); [] when it was not evaluated."""
    precision = _precision(scores)
    rows = []
    for dataset, ps in _base_rows(predictions).items():
        values = [float(p["score"]) for p in ps]
        low, high = score_ci(values, confidence)
        rows.append([dataset, str(len(ps)), f"{sum(values) / len(ps):.3f}", f"[{low:.3f}, {high:.3f}]",
                     f"{sum(p['extracted'] is not None for p in ps) / len(ps):.0%}",
                     f"{sum(p['truncated'] for p in ps) / len(ps):.0%}",
                     _fmt(_mean([p["latency"] for p in ps]), ".2f"),
                     _fmt(_mean([p["prompt_tokens"] for p in ps]), ".0f"),
                     _fmt(_mean([p.get("completion_tokens") for p in ps]), ".0f"),
                     precision.get(dataset, "–")])
    return rows


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT else flat[:EXCERPT - 1] + "…"


def example_rows(predictions: list[pa.Table], per_kind: int = 2) -> list[list[str]]:
    """Up to ``per_kind`` correct and ``per_kind`` wrong base predictions per dataset, first by id."""
    rows = []
    for dataset, ps in _base_rows(predictions).items():
        for verdict, want in (("correct", True), ("wrong", False)):
            for p in [p for p in ps if bool(p["correct"]) == want][:per_kind]:
                rows.append([dataset, p["id"], verdict, p["extracted"] or "(none)", _excerpt(p["completion"])])
    return rows


def base_sections(predictions: pa.Table | list[pa.Table] | None, scores: pa.Table | list[pa.Table],
                  confidence: float = 0.95) -> list[tuple[tuple[str, str, list[str], list[list[str]]], int]]:
    """The report sections ((heading, note, header, rows), text columns) of the base model, or []."""
    if predictions is None:
        return []
    predictions = [predictions] if isinstance(predictions, pa.Table) else list(predictions)
    scores = [scores] if isinstance(scores, pa.Table) else list(scores)
    table = base_table(predictions, scores, confidence)
    if not table:
        return []
    pct = f"{confidence:.0%}"
    note = (f"Every base-model completion scored, per dataset: mean primary score with its {pct} interval "
            "(Wilson for 0/1 scores, else bootstrap over examples), share with an extractable answer, share "
            "cut at max_new_tokens, mean seconds and tokens per completion, weights' precision.")
    out = [(("Base model", note, HEADER, table), 1)]
    examples = example_rows(predictions)
    if examples:
        how = "The first correct and wrong completions by id, with the answer extracted from each."
        out.append((("Example predictions (base model)", how, EXAMPLE_HEADER, examples), 5))
    return out

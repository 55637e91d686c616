"""Report: the signals section and its "SD cannot help here" flag; every table names its split."""

from __future__ import annotations

import pyarrow as pa

import schemas
from stages.report import report_markdown, summary_table
from stages.report.signals import FLAG, no_signal


def signal_rows(dataset: str, acc: tuple[float, float | None], gold: float, answer: float | None) -> list[dict]:
    def row(stat: str, value: float, low: float | None = None, high: float | None = None) -> dict:
        return {"dataset": dataset, "model": "m", "statistic": stat, "value": value, "ci_low": low,
                "ci_high": high, "n": 40, "split": "train"}
    out = [row("acc_student", 0.3), row("acc_teacher_ref", 0.3 + acc[0]),
           row("acc_gain", acc[0], acc[1], None if acc[1] is None else 2 * acc[0] - acc[1]),
           row("logp_gold_plain", -1.4), row("logp_gold_privileged", -1.4 + gold), row("logp_gold_gain", gold),
           row("divergence_own_samples", 0.2), row("agreement_spread", 0.5), row("num_views", 3.0)]
    if answer is not None:
        out.append(row("logp_answer_gain", answer, answer - 0.1, answer + 0.1))
    return out


def stats(rows: list[dict]) -> dict[str, dict]:
    return {r["statistic"]: r for r in rows}


def test_flag_rule() -> None:
    assert no_signal(stats(signal_rows("a", (0.05, -0.02), -0.2, -0.1)))  # acc CI spans 0, both log-p gains ≤ 0
    assert not no_signal(stats(signal_rows("a", (0.2, 0.05), -0.2, -0.1)))  # accuracy clearly higher
    assert not no_signal(stats(signal_rows("a", (0.0, -0.05), -0.2, 0.67)))  # the answer tokens gain
    assert not no_signal(stats(signal_rows("a", (0.0, -0.05), 0.1, None)))  # the reference gains (no answer)
    assert no_signal(stats(signal_rows("a", (0.0, None), 0.0, None)))  # one item: the point value decides
    assert not no_signal(stats(signal_rows("a", (0.1, None), -1.0, -1.0)))


def scores(split_of: dict[str, str]) -> list[pa.Table]:
    """One scores table per evaluated run (as the evaluate stage writes them)."""
    rows = [{"dataset": "d", "model": "m", "method": method, "metric": "accuracy", "value": value, "n": 10,
             "seed": seed, "trained_on": None if method == "base" else "d", "split": split_of[method]}
            for method, seed, value in (("base", None, 0.3), ("sd", 0, 0.4), ("sd", 1, 0.5))]
    return [schemas.conform([r], schemas.SCORES) for r in rows]


def test_report_shows_signals_with_the_flag_and_the_split() -> None:
    signals = schemas.conform(signal_rows("flat", (0.0, -0.1), -0.3, -0.2) + signal_rows("rich", (0.3, 0.1), 0.2, 0.7),
                              schemas.SIGNALS)
    md = report_markdown("t", scores({"base": "test", "sd": "test"}), signals=signals)
    section = md.split("## Signals")[1]
    flat = next(line for line in section.splitlines() if line.startswith("| flat"))
    rich = next(line for line in section.splitlines() if line.startswith("| rich"))
    assert FLAG in flat and FLAG not in rich
    assert "+0.300 [+0.100, +0.500]" in rich and "-1.400 → -1.200" in rich
    assert "items of the train split" in section
    assert "Scores on the test split" in md


def test_mixed_splits_get_one_column_each_instead_of_a_clash() -> None:
    table = scores({"base": "validation", "sd": "test"}) + scores({"base": "validation", "sd": "validation"})[1:]
    columns, rows = summary_table(table)
    assert set(columns) == {"d [test]", "d [validation]", "Overall"}
    sd = next(r for r in rows if r["method"] == "sd")
    assert sd["d [test]"].mean == sd["d [validation]"].mean == 0.45
    md = report_markdown("t", table)
    assert "Scores on the test and validation splits" in md

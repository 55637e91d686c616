"""The base model's report section: n, score with its 95% interval, extraction, latency, tokens, precision,
and example predictions, correct and wrong."""

from __future__ import annotations

import math

import pytest

import schemas
from stages.report import report_markdown, write_report
from stages.report.base import HEADER, base_table, example_rows, score_ci, wilson_ci


def preds(dataset: str = "medmcqa", n: int = 10, correct: int = 7, method: str = "base", score=None) -> list[dict]:
    return [{"id": f"{dataset}/{i:02d}", "dataset": dataset, "model": "m", "method": method, "sample": 0,
             "prompt_tokens": 100 + i, "completion_tokens": 20 + i, "completion": f"Reasoning {i}.\nAnswer: B",
             "extracted": None if i == n - 1 else "B", "correct": i < correct,
             "score": (1.0 if i < correct else 0.0) if score is None else score, "latency": 0.5,
             "truncated": i == n - 1} for i in range(n)]


def scores(dataset: str = "medmcqa") -> list[dict]:
    return [{"dataset": dataset, "model": "m", "method": "base", "metric": "accuracy", "value": 0.7, "n": 10,
             "stderr": 0.14, "split": "test", "precision": "float32"}]


def test_wilson_matches_the_closed_form_and_stays_inside_0_1() -> None:
    low, high = wilson_ci(7, 10)
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)  # Wilson 95%, 7/10 (z = 1.96)
    assert wilson_ci(0, 10)[0] == 0.0 and wilson_ci(0, 10)[1] > 0.2  # not degenerate at 0 %
    assert wilson_ci(10, 10)[1] == 1.0 and wilson_ci(10, 10)[0] < 0.8
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_ci(11, 10)


def test_fractional_scores_use_the_bootstrap() -> None:
    low, high = score_ci([0.5, 0.25, 0.75, 1.0, 0.0, 0.5])
    assert low < 0.5 < high and low >= 0.0 and high <= 1.0
    assert (low, high) != wilson_ci(3, 6)


def test_base_table_row_per_dataset() -> None:
    table = schemas.conform(preds() + preds("gsm8k", 4, 1), schemas.PREDICTIONS)
    trained = schemas.conform(preds(method="sd", correct=0), schemas.PREDICTIONS)  # not the base model: ignored
    rows = base_table([table, trained], [schemas.conform(scores(), schemas.SCORES)])
    assert [r[0] for r in rows] == ["gsm8k", "medmcqa"]
    med = dict(zip(HEADER, rows[1]))
    low, high = wilson_ci(7, 10)
    assert med == {"dataset": "medmcqa", "n": "10", "score": "0.700", "CI": f"[{low:.3f}, {high:.3f}]",
                   "extracted": "90%", "truncated": "10%", "latency s": "0.50", "prompt tok": "104",
                   "completion tok": "24", "precision": "float32"}
    assert dict(zip(HEADER, rows[0]))["precision"] == "–"  # no score row recorded it


def test_examples_show_correct_and_wrong_first_by_id() -> None:
    rows = example_rows([schemas.conform(preds(), schemas.PREDICTIONS)])
    assert [(r[1], r[2]) for r in rows] == [("medmcqa/00", "correct"), ("medmcqa/01", "correct"),
                                            ("medmcqa/07", "wrong"), ("medmcqa/08", "wrong")]
    assert rows[0][4] == "Reasoning 0. Answer: B" and rows[0][3] == "B"


def test_report_shows_the_base_section_and_examples(tmp_path) -> None:
    p = schemas.conform(preds(), schemas.PREDICTIONS)
    s = schemas.conform(scores(), schemas.SCORES)
    md = report_markdown("t", [s], predictions=[p])
    assert "## Base model" in md and "## Example predictions (base model)" in md
    assert "| medmcqa | 10 | 0.700 | [0.397, 0.892] | 90% | 10% | 0.50 | 104 | 24 | float32 |" in md
    assert "| medmcqa | medmcqa/07 | wrong | B | Reasoning 7. Answer: B |" in md
    written = write_report(tmp_path, title="t", scores=[s], predictions=[p])
    html = written["report.html"].read_text()
    assert "Base model" in html and "medmcqa/07" in html
    assert "## Base model" not in report_markdown("t", [s])  # without predictions: no section
    assert not math.isnan(wilson_ci(1, 1)[0])

"""Check that each negative is really wrong, with the evaluation scorers.

A negative is read exactly as an evaluated completion would be (`stages.evaluate.scoring.score_rows`),
so "wrong" means "the scorer would mark it incorrect":

- MCQA: its letter differs from the gold letter; no letter found -> unverifiable (null);
- maths: its number differs from the gold number; no number -> null;
- code: its program fails at least one test in the sandbox (a timeout counts as failing); the sandbox
  itself failing to run (status ``error``) -> null;
- any family: a text too long for the scorer (status ``too_long``) -> null;
- tool use: its steps differ from the gold steps in action names or arguments; no parsable step -> null;
- free text: an exact (normalised) match is verified correct (false); anything else is null, since a
  paraphrase of the right answer is not wrong.

Negatives that turn out correct are kept with ``verified_wrong = false``; the trainer filters them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engines.sandbox import SandboxLimits
from stages.evaluate.scoring import RowScore, score_rows


@dataclass(frozen=True)
class Verdict:
    wrong_answer: str | None
    """The answer the negative gives (letter, number, JSON action list; null for code)."""
    verified_wrong: bool | None
    """True: the scorer marks it incorrect; False: correct; None: could not be decided."""
    detail: str = ""
    """Why (scorer rule or sandbox status), for logs."""


def verdict(family: str, text: str, score: RowScore) -> Verdict:
    """Turn one scorer result into a `Verdict` (see the module docstring for the rules)."""
    if family in ("mcqa", "math"):
        if score.extracted is None:
            return Verdict(None, None, "no answer found")
        return Verdict(score.extracted, not score.correct, "scorer")
    if score.detail.get("status") == "too_long":
        return Verdict(None, None, "too long to score")
    if family == "code":
        status = score.detail.get("status", "error")
        if status == "error":
            return Verdict(None, None, f"sandbox error: {score.detail.get('stderr', '')[-200:]}")
        return Verdict(None, not score.correct, f"sandbox {status}")
    if family == "tool":
        if score.extracted is None or not json.loads(score.extracted):
            return Verdict(None, None, "no tool call found")
        actions = [s.get("action") for s in json.loads(score.extracted)]
        return Verdict(json.dumps(actions, ensure_ascii=False), not score.correct, "scorer")
    if family == "free":
        return Verdict(score.extracted, False if score.correct else None, "free text")
    return Verdict(None, None, f"unknown family {family}")


def verify_negatives(items: list[tuple[dict[str, Any], str]], limits: SandboxLimits,
                     workers: int, allow_unsandboxed: bool = False) -> list[Verdict]:
    """A `Verdict` per (example, negative text), code run ``workers`` programs at a time (see
    `engines.sandbox` for ``allow_unsandboxed``)."""
    if not items:
        return []
    scores = score_rows([(ex["family"], text, ex) for ex, text in items], limits, workers, allow_unsandboxed)
    return [verdict(ex["family"], text, s) for (ex, text), s in zip(items, scores)]

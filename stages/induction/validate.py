"""Reject induced instructions that leak the demonstrations' answers or point at a missing solution.

An induced instruction goes into an auxiliary teacher context of *other* items, so anything specific to
its demonstrations is noise at best and a leaked answer at worst. `check_instruction` returns the first
reason to reject, or None:

- ``too_short`` / ``too_long``: fewer than ``min_words`` words, more than ``max_chars`` characters;
- ``not_prose``: under 15% of its words are English function words (the, and, of, ...), as in the
  token salad a small or broken model emits;
- ``mentions_reference``: refers to a reference/example solution or "the examples above" - the
  context that will hold it has none (REFERENCE-UNISD §8.10);
- ``contains_code``: a code fence, or a line copied from a demonstration's reference code;
- ``copies_demo``: five or more consecutive words of one demonstration's problem that the other
  demonstrations do not share (shared runs are the dataset's prompt template, fine to repeat);
- ``leaks_letter``: an option letter stated as an answer ("the answer is B", "option (C)");
- ``leaks_number``: a number that is a demonstration's final answer;
- ``leaks_answer``: a demonstration's answer text (the gold option's text, the function name, a tool
  action name, a free-text answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from engines.wordnet import STOP_WORDS
from stages.evaluate.scoring import normalise_number

REASONS = ("empty", "too_short", "too_long", "not_prose", "mentions_reference", "contains_code", "copies_demo",
           "leaks_letter", "leaks_number", "leaks_answer", "duplicate")

_REFERENCE = re.compile(
    r"\b(?:reference|model|sample|example|provided|given|gold|above)\s+(?:solution|answer|code|response)s?\b"
    r"|\b(?:study|follow|copy|see|use|consult)\s+the\s+(?:solution|examples?|demonstrations?)\b"
    r"|\b(?:examples?|demonstrations?|solutions?)\s+(?:above|below|provided|given|shown)\b"
    r"|\b(?:above|previous|these|those)\s+(?:examples?|demonstrations?)\b"
    r"|\bexample\s*#?\d",
    re.IGNORECASE)
_LETTER_AS_ANSWER = (
    re.compile(r"\b(?i:answer|option|choice|letter)\s*(?i:is|would\s+be|should\s+be|:|=)?\s*\(?([A-Z])\)?"
               r"(?![\w<])"),
    re.compile(r"(?<![\w<])\(([A-Z])\)(?!\w)"),
    re.compile(r"^\s*([A-Z])[.)]\s", re.MULTILINE),
)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*(?:/\d+)?(?![\w])")
MIN_FUNCTION_WORDS = 0.15
_TRIVIAL_CODE = {"else:", "try:", "pass", "return", "break", "continue", "return result", "return True",
                 "return False", "return None", "return 0", "return res", "return ans"}


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def answer_texts(example: dict[str, Any]) -> list[str]:
    """Strings that identify a demonstration's answer, beyond letters and numbers."""
    family, answer = example["family"], (example.get("answer") or "").strip()
    out: list[str] = []
    if family == "mcqa":
        options = example.get("options") or []
        idx = ord(answer.upper()) - ord("A") if len(answer) == 1 and answer.isalpha() else -1
        if 0 <= idx < len(options):
            out.append(options[idx])
    elif family == "tool":
        try:
            out += [str(a) for a in json.loads(answer)]
        except (json.JSONDecodeError, TypeError):
            pass
    elif family in ("code", "free"):
        out.append(answer)
    return [t.strip() for t in out if len(t.strip()) >= 4 and not _NUMBER.fullmatch(t.strip())]


def answer_numbers(example: dict[str, Any]) -> set[str]:
    """Numbers that are a demonstration's final answer (maths, or a numeric free-text answer)."""
    if example["family"] not in ("math", "free"):
        return set()
    return {normalise_number(n) for n in _NUMBER.findall(example.get("answer") or "")}


def code_lines(example: dict[str, Any]) -> list[str]:
    """Non-trivial lines of a code demonstration's reference, whitespace-normalised."""
    if example["family"] != "code":
        return []
    lines = (" ".join(ln.split()) for ln in (example.get("reference") or "").splitlines())
    return [ln for ln in lines if len(ln) >= 12 and ln not in _TRIVIAL_CODE and not ln.startswith("#")]


COPY_WORDS = 5


def _ngrams(text: str, n: int = COPY_WORDS) -> set[tuple[str, ...]]:
    words = [w.lower() for w in _words(text)]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _copies_demo(text: str, demos: list[dict[str, Any]]) -> bool:
    """A run of COPY_WORDS words from one demonstration's problem that is not template text."""
    grams = [_ngrams(d.get("prompt") or "") for d in demos]
    shared = set.intersection(*grams) if len(grams) > 1 else set()
    mine = _ngrams(text)
    return any(mine & (g - shared) for g in grams)


def _letter_answer(text: str, demos: list[dict[str, Any]]) -> bool:
    """An option letter of the demonstrations' range (A-D for 4 options) stated as an answer."""
    n = max((len(d.get("options") or []) for d in demos if d["family"] == "mcqa"), default=0)
    valid = {chr(ord("A") + i) for i in range(n)}
    return any(m[1] in valid for p in _LETTER_AS_ANSWER for m in p.finditer(text))


def check_instruction(text: str | None, demos: Iterable[dict[str, Any]], min_words: int = 8,
                      max_chars: int = 1200) -> str | None:
    """The first reason (one of `REASONS`) to reject ``text`` given its demonstrations, or None."""
    if not text or not text.strip():
        return "empty"
    demos = list(demos)
    words = _words(text)
    if len(words) < min_words:
        return "too_short"
    if len(text) > max_chars:
        return "too_long"
    if sum(w.lower() in STOP_WORDS for w in words) < MIN_FUNCTION_WORDS * len(words):
        return "not_prose"
    if _REFERENCE.search(text):
        return "mentions_reference"
    flat = " ".join(text.split())
    if "```" in text or any(line in flat for d in demos for line in code_lines(d)):
        return "contains_code"
    if _copies_demo(text, demos):
        return "copies_demo"
    if _letter_answer(text, demos):
        return "leaks_letter"
    numbers = set().union(*(answer_numbers(d) for d in demos)) if demos else set()
    if numbers and any(normalise_number(n) in numbers for n in _NUMBER.findall(text)):
        return "leaks_number"
    low = _norm(text)
    for d in demos:
        for ans in answer_texts(d):
            if re.search(rf"(?<!\w){re.escape(_norm(ans))}(?!\w)", low):
                return "leaks_answer"
    return None

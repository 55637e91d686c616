"""Prompt templates and reference formats shared by every dataset adapter.

The student prompt ``x`` is one user turn without a chat template. The reference is what the teacher
sees after "This is an example for a response to the question:" in the privileged prompt, laid out as
"Reasoning: r" then "Answer: a" when the dataset has a rationale, else "Answer: a"; that is the same
final-line format the student is asked to produce, so the scorer and the teacher agree on it.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from typing import Any

LETTERS = string.ascii_uppercase
FAMILIES = ("mcqa", "code", "math", "free", "tool")
CODE_INSTRUCTION = "Return the full function in a ```python code block."


class RecordError(ValueError):
    """One source record cannot become an example; the caller adds where (file/hub id, row)."""


class SkipRecord(Exception):
    """A well-formed record this pipeline does not use (has an image, has no gold answer, ...)."""


@dataclass
class Draft:
    """An example as an adapter builds it; the stage adds id, dataset, split and family."""

    prompt: str
    reference: str
    answer: str
    key: str | None = None
    """Native id of the item (None: the id is a hash of the prompt)."""
    rationale: str | None = None
    options: list[str] | None = None
    tests: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def need(rec: dict[str, Any], key: str) -> Any:
    """``rec[key]``, or a RecordError naming the missing field (and the fields that exist)."""
    if key not in rec or rec[key] is None:
        have = ", ".join(sorted(map(str, rec))) or "none"
        raise RecordError(f"missing field {key!r} (fields present: {have})")
    return rec[key]


def text(value: Any, name: str) -> str:
    """A non-empty stripped string, or a RecordError naming the field."""
    out = optional_text(value)
    if out is None:
        raise RecordError(f"field {name!r} is empty")
    return out


def optional_text(value: Any) -> str | None:
    """A stripped string, or None for missing/empty/NaN values."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    out = str(value).strip()
    return out or None


def letters_phrase(n: int) -> str:
    """``"A, B, C, or D"`` for n = 4."""
    letters = list(LETTERS[:n])
    if n == 1:
        return letters[0]
    if n == 2:
        return f"{letters[0]} or {letters[1]}"
    return ", ".join(letters[:-1]) + f", or {letters[-1]}"


def mcqa_prompt(question: str, options: list[str], context: str | None = None) -> str:
    """The multiple-choice student prompt: question, optional context, lettered options, answer format."""
    if not 2 <= len(options) <= len(LETTERS):
        raise RecordError(f"a multiple-choice item needs 2 to {len(LETTERS)} options, got {len(options)}")
    parts = ["Answer the following multiple-choice question.", "", f"Question: {question.strip()}"]
    if context:
        parts += ["", f"Context: {context.strip()}"]
    parts.append("")
    parts += [f"{LETTERS[i]}. {opt.strip()}" for i, opt in enumerate(options)]
    parts += [
        "",
        "Reason briefly (at most 3 short sentences), then give the final answer on the last line as "
        f'"Answer: <letter>", where <letter> is one of {letters_phrase(len(options))}. '
        "There is exactly one correct answer.",
    ]
    return "\n".join(parts)


def math_prompt(question: str, answer: str = "reasoned") -> str:
    """The maths student prompt: the problem and the required final-line format (``answer``: reasoned =
    brief reasoning first, direct = the answer line alone)."""
    if answer == "direct":
        return (f"Solve the following problem.\n\n{question.strip()}\n\n"
                'Give only the final answer, on one line, as "Answer: <number>".')
    return (
        f"Solve the following problem.\n\n{question.strip()}\n\n"
        "Reason step by step, briefly, then give the final answer on the last line as "
        '"Answer: <number>".'
    )


def code_prompt(task: str, signature: str) -> str:
    """A code-generation prompt built from a task description and the required signature."""
    return (
        f"Write a Python function for the task below. {CODE_INSTRUCTION}\n\n"
        f"Task: {task.strip()}\n\n"
        f"The function must have this signature:\n```python\n{signature.strip()}\n```"
    )


def reference(answer: str, rationale: str | None = None) -> str:
    """``"Reasoning: r\\nAnswer: a"`` when a rationale exists, else ``"Answer: a"``."""
    head = f"Reasoning: {rationale.strip()}\n" if rationale and rationale.strip() else ""
    return f"{head}Answer: {answer}"


def letter_of(index: int, n_options: int) -> str:
    """The letter of a 0-based option index, or a RecordError when it is out of range."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_options:
        raise RecordError(f"answer index {index!r} is out of range for {n_options} options "
                          f"(expected 0-{n_options - 1})")
    return LETTERS[index]


def normalise(prompt: str) -> str:
    """Case- and whitespace-insensitive form of a prompt, used to detect duplicates across splits."""
    return " ".join(prompt.lower().split())


def content_hash(*parts: str, n: int = 16) -> str:
    """A short stable hash of normalised text parts (ids for sources without a native id)."""
    h = hashlib.sha256("\x1f".join(normalise(p) for p in parts).encode()).hexdigest()
    return h[:n]


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no NaN) so identical inputs give identical bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str)


def clean_number(value: str) -> str:
    """``"1,234"`` -> ``"1234"``; ``" 72 "`` -> ``"72"`` (GSM8K-style final answers)."""
    out = value.strip().replace(",", "").replace("$", "").rstrip(".")
    if not out:
        raise RecordError("final answer is empty")
    return out

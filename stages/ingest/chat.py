"""Read the record layouts other tools already write, so a local file needs no hand conversion.

- Chat records: a list of ``{"role", "content"}`` turns (OpenAI evals ``input``, TRL ``messages`` and
  conversational ``prompt``/``completion``, lm-eval chat exports). The prompt is the last user turn; earlier
  user/assistant turns (few-shot demonstrations) are kept in front of it as plain ``User:`` /
  ``Assistant:`` lines; system turns are kept in ``meta.system`` (our own templates carry the answer
  format); a final assistant turn is the answer. Content may be a string or a list of ``{"type": "text"}``
  parts.
- Options inside the prompt: a run of lettered lines ``A: …``, ``(A) …``, ``A. …`` or ``a) …`` starting at
  A, in order. The text before the run is the question; the text after it (an answer-format instruction)
  is dropped from the prompt, because the shared MCQA template states its own, and kept in ``meta``.
- Options as a list, a JSON list string, a mapping ``{"A": "…", "B": "…"}`` or the hub layout
  ``{"label": [...], "text": [...]}``.
- Answers as a letter, ``(C)``, ``C)``, ``C.``, ``c) text`` (evals' ``ideal``), an option's exact text or a
  0-based index; a list of acceptable answers (evals) uses its first entry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from stages.ingest.formats import LETTERS, RecordError, optional_text

CHAT_ROLES = ("system", "developer", "user", "assistant")
_OPTION_LINE = re.compile(r"^\s*(?:\((?P<p>[A-Za-z])\)|(?P<l>[A-Za-z])\s*(?P<s>[.:)]))\s*(?P<t>\S.*?)\s*$")
_LETTERED_ANSWER = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Za-z])\s*[.:)])(?:\s+.*)?\s*$", re.DOTALL)


@dataclass(frozen=True)
class Chat:
    """A chat record split into what the pipeline uses."""

    prompt: str
    """The last user turn, after any earlier turns rendered as plain lines."""
    answer: str | None
    """The content of a final assistant turn, if any."""
    system: str | None
    """System (or developer) turns joined, if any."""


def is_chat(value: Any) -> bool:
    """Whether ``value`` is a non-empty list of role/content turns."""
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def content_text(content: Any) -> str:
    """A turn's content as text: a string, or the text parts of a list of typed parts."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, (list, tuple)):
        parts = [p.get("text") if isinstance(p, dict) else p for p in content]
        return "\n".join(str(p).strip() for p in parts if isinstance(p, str) and p.strip())
    return "" if content is None else str(content).strip()


def parse_chat(turns: list[dict[str, Any]], column: str) -> Chat:
    """Split a list of turns into (prompt, final assistant answer, system text)."""
    bad = [m.get("role") for m in turns if m.get("role") not in CHAT_ROLES]
    if bad:
        raise RecordError(f"column {column!r}: unknown chat role {bad[0]!r} (valid: {', '.join(CHAT_ROLES)})")
    system = "\n\n".join(content_text(m["content"]) for m in turns if m["role"] in ("system", "developer"))
    dialogue = [m for m in turns if m["role"] in ("user", "assistant")]
    answer = None
    if dialogue and dialogue[-1]["role"] == "assistant":
        answer = content_text(dialogue[-1]["content"]) or None
        dialogue = dialogue[:-1]
    if not dialogue or dialogue[-1]["role"] != "user":
        raise RecordError(f"column {column!r}: the chat has no user turn to use as the prompt")
    last = content_text(dialogue[-1]["content"])
    if not last:
        raise RecordError(f"column {column!r}: the last user turn is empty")
    shots = [f"{m['role'].capitalize()}: {content_text(m['content'])}" for m in dialogue[:-1]]
    prompt = "\n\n".join([*shots, f"User: {last}"]) if shots else last
    return Chat(prompt=prompt, answer=answer, system=system or None)


def split_lettered_options(text: str) -> tuple[str, list[str], str] | None:
    """(question, options, trailing text) of a prompt whose lines hold lettered options, else None.

    The options are the longest run of consecutive lines lettered A, B, C, … (any one style per run,
    upper or lower case); at least two are needed, and the question before them must not be empty."""
    lines = text.split("\n")
    best: tuple[int, int] | None = None
    i = 0
    while i < len(lines):
        end = _run_from(lines, i)
        if end - i >= 2 and (best is None or end - i >= best[1] - best[0]):
            best = (i, end)
        i = max(end, i + 1)
    if best is None:
        return None
    start, end = best
    question = "\n".join(lines[:start]).strip()
    if not question:
        return None
    options = [_OPTION_LINE.match(lines[j]).group("t") for j in range(start, end)]  # type: ignore[union-attr]
    return question, options, "\n".join(lines[end:]).strip()


def _run_from(lines: list[str], start: int) -> int:
    """End (exclusive) of the run of lettered lines A, B, … beginning at ``start`` (``start`` if none)."""
    j, style = start, None
    while j < len(lines):
        m = _OPTION_LINE.match(lines[j])
        if m is None:
            break
        letter = m.group("p") or m.group("l")
        shape = (m.group("s") or "()", letter.isupper())
        if letter.upper() != LETTERS[j - start] or (style is not None and shape != style):
            break
        style = shape
        j += 1
    return j


def options_value(value: Any, column: str) -> list[Any] | None:
    """Options from a list, a JSON string, a letter -> text mapping or {"label": [...], "text": [...]}."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError(f"column {column!r} (field options) is not a JSON list or object") from None
    if value is None:
        return None
    if isinstance(value, dict):
        if "text" in value and isinstance(value["text"], (list, tuple)):
            labels = value.get("label") or value.get("labels")
            texts = list(value["text"])
            if isinstance(labels, (list, tuple)) and len(labels) == len(texts):
                order = sorted(range(len(texts)), key=lambda k: str(labels[k]))
                return [texts[k] for k in order]
            return texts
        keys = [str(k) for k in value]
        if all(len(k) == 1 and k.upper() in LETTERS for k in keys):
            return [value[k] for k in sorted(value, key=lambda k: str(k).upper())]
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    raise RecordError(f"column {column!r} (field options) must be a list or a mapping, "
                      f"got {type(value).__name__}")


def answer_letter(raw: Any, options: list[str], column: str) -> str:
    """The letter of an answer given as a letter, "(C)"/"C)"/"C."/"c) text", an option text or an index."""
    n = len(options)
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise RecordError(f"column {column!r} (field answer) is an empty list")
        raw = raw[0]
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _index(raw, n, column)
    value = optional_text(raw)
    if value is None:
        raise RecordError(f"column {column!r} (field answer) is empty")
    if len(value) == 1 and value.upper() in LETTERS:
        return _in_range(value.upper(), n, column, value)
    folded = [o.casefold() for o in options]
    if value.casefold() in folded:
        return LETTERS[folded.index(value.casefold())]
    m = _LETTERED_ANSWER.match(value)
    if m:
        return _in_range((m.group(1) or m.group(2)).upper(), n, column, value)
    if value.lstrip("-").isdigit():
        return _index(int(value), n, column)
    raise RecordError(f"column {column!r}: answer {value[:40]!r} is not a letter A-{LETTERS[n - 1]}, "
                      "an option's text or a 0-based index")


def _in_range(letter: str, n: int, column: str, given: str) -> str:
    if letter not in LETTERS[:n]:
        raise RecordError(f"column {column!r}: answer {given[:40]!r} is not one of the options A-{LETTERS[n - 1]}")
    return letter


def _index(index: int, n: int, column: str) -> str:
    if not 0 <= index < n:
        raise RecordError(f"answer index {index} is out of range for {n} options "
                          f"(expected 0-{n - 1}; column {column!r})")
    return LETTERS[index]

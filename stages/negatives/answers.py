"""Shared pieces of every negative: the reference layout, wrong-answer targets, text edits.

A negative is written in exactly the layout of the item's gold ``reference`` ("Reasoning: r" then
"Answer: a" for choice and maths items, bare code for code, ReAct lines for tool use), so the good and
the bad teacher prompts differ only in content, never in surface form (REFERENCE-UNISD §8.10).
Wrong-answer targets are deterministic per (seed, item, slot): MCQA targets cycle through all
distractors from an item-specific offset, so every distractor is used before any repeats and no letter
is favoured across items (the reference cycled from the first sorted distractor, §2.3).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from fractions import Fraction
from typing import Any

from stages.evaluate.scoring import extract_number, normalise_number
from stages.ingest.formats import LETTERS
from stages.ingest.formats import reference as format_reasoned

__all__ = [
    "distractors",
    "drop_sentence",
    "format_reasoned",
    "negate_claim",
    "react_text",
    "reasoning_of",
    "reference_thoughts",
    "replace_number",
    "sentences",
    "stable_int",
    "target_letters",
    "tool_actions",
    "tool_steps",
    "wrong_numbers",
]

_REASONING = re.compile(r"^\s*Reasoning:\s*(.*?)\n\s*Answer:", re.DOTALL)


def stable_int(*parts: Any) -> int:
    """A process-independent integer hash of ``parts`` (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def reasoning_of(example: dict[str, Any]) -> str | None:
    """The gold reasoning: the rationale column, else the "Reasoning:" part of the reference."""
    if example.get("rationale") and example["rationale"].strip():
        return example["rationale"].strip()
    m = _REASONING.match(example.get("reference") or "")
    return m[1].strip() if m and m[1].strip() else None


def distractors(example: dict[str, Any]) -> list[str]:
    """Option letters other than the gold one, in letter order."""
    gold = example["answer"].strip().upper()
    return [LETTERS[i] for i in range(len(example.get("options") or [])) if LETTERS[i] != gold]


def target_letters(example: dict[str, Any], n: int, seed: int) -> list[str]:
    """n wrong letters cycling through all distractors from an item-specific offset."""
    wrong = distractors(example)
    if not wrong:
        return []
    offset = stable_int("letters", seed, example["id"]) % len(wrong)
    return [wrong[(offset + j) % len(wrong)] for j in range(n)]


def _fmt(value: Fraction, like: str) -> str:
    if "/" in like and value.denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    if value.denominator == 1:
        return str(value.numerator)
    return normalise_number(f"{float(value):.6g}")


def wrong_numbers(gold: str, n: int, rng: random.Random) -> list[str]:
    """n distinct plausible wrong results near ``gold`` (off by one, doubled, halved, digit slips)."""
    try:
        value = Fraction(normalise_number(gold))
    except (ValueError, ZeroDivisionError):
        number = extract_number(gold)
        value = Fraction(number) if number and "/" not in number else Fraction(0)
    step = Fraction(1) if value.denominator == 1 else Fraction(1, value.denominator)
    pool = [value + step, value - step, value * 2, value + 10 * step, value - 10 * step, value * 10,
            value + 2 * step, -value if value else value + 3 * step]
    if value.denominator == 1 and value % 2 == 0:
        pool.append(value / 2)
    digits = str(abs(value.numerator))
    if value.denominator == 1 and len(digits) >= 2 and digits[-1] != digits[-2]:
        swapped = int(digits[:-2] + digits[-1] + digits[-2])
        pool.append(Fraction(swapped if value >= 0 else -swapped))
    out: list[str] = []
    for cand in pool:
        text = _fmt(cand, gold)
        if cand != value and text not in out:
            out.append(text)
    head, tail = out[:2], out[2:]  # off-by-one slips first (in random order), then the rest shuffled
    rng.shuffle(head)
    rng.shuffle(tail)
    ordered = head + tail
    return [ordered[j % len(ordered)] for j in range(n)]


def replace_number(text: str, old: str, new: str) -> str:
    """Every standalone occurrence of the number ``old`` in ``text`` replaced by ``new`` (not 14 for 4)."""
    if not old:
        return text
    return re.sub(rf"(?<![\w.]){re.escape(old)}(?![\w]|\.\d)", new, text)


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


def sentences(text: str) -> list[str]:
    """Lines when the text has several, else sentences."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) > 1:
        return lines
    return [s for s in _SENTENCE.split(text.strip()) if s.strip()]


def drop_sentence(text: str, rng: random.Random) -> str | None:
    """``text`` without one of its steps (None when it has fewer than two)."""
    parts = sentences(text)
    if len(parts) < 2:
        return None
    del parts[rng.randrange(len(parts))]
    joiner = "\n" if "\n" in text.strip() else " "
    return joiner.join(parts)


_NEGATIONS = [
    (r"\b(is|are|was|were|can|could|does|do|did|will|would|should|must|has|have|had)\s+not\b", r"\1"),
    (r"\bcannot\b", "can"), (r"\b(is|are|was|were|does|do|did)n't\b", r"\1"),
    (r"\b(is|are|was|were|will|would|should|must|could)\b(?!\s+not)", r"\1 not"),
    (r"\bcan\b(?!not)", "cannot"),
    (r"\b(increases|decreases|raises|lowers)\b", None),
]
_FLIP = {"increases": "decreases", "decreases": "increases", "raises": "lowers", "lowers": "raises"}


def negate_claim(text: str, rng: random.Random) -> str | None:
    """``text`` with one claim negated ("is" -> "is not", "cannot" -> "can", "increases" -> "decreases")."""
    sites = []
    for pattern, repl in _NEGATIONS:
        for m in re.finditer(pattern, text, re.IGNORECASE):
            sites.append((m, repl))
    if not sites:
        return None
    m, repl = sites[rng.randrange(len(sites))]
    new = _FLIP[m[0].lower()] if repl is None else m.expand(repl)
    if m[0][:1].isupper():
        new = new[:1].upper() + new[1:]
    return text[:m.start()] + new + text[m.end():]


# --- tool use ------------------------------------------------------------------------------------

_ONE_OF = re.compile(r"should be one of \[([^\]]*)\]", re.IGNORECASE)


def tool_steps(example: dict[str, Any]) -> list[dict[str, Any]]:
    """Gold steps [{action, action_input}] from the ``tests`` column."""
    try:
        steps = json.loads(example.get("tests") or "[]")
    except json.JSONDecodeError:
        return []
    return [s for s in steps if isinstance(s, dict) and s.get("action")] if isinstance(steps, list) else []


def tool_actions(example: dict[str, Any]) -> list[str]:
    """Tool names the prompt offers ("should be one of [a, b]", else "name: description" lines)."""
    prompt = example.get("prompt") or ""
    m = _ONE_OF.search(prompt)
    if m:
        return [a.strip() for a in m[1].split(",") if a.strip()]
    head = prompt.split("Use the following format", 1)[0]
    return re.findall(r"^([A-Za-z_][\w.]*):\s", head, re.MULTILINE)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def react_text(steps: list[dict[str, Any]], thoughts: list[str | None] | None = None) -> str:
    """ReAct lines for ``steps``, each preceded by its thought when one is given."""
    lines: list[str] = []
    for i, step in enumerate(steps):
        thought = thoughts[i] if thoughts and i < len(thoughts) else None
        if thought:
            lines.append(f"Thought: {thought}")
        lines += [f"Action: {step['action']}", f"Action Input: {_show(step['action_input'])}"]
    return "\n".join(lines)


def reference_thoughts(reference: str, n_steps: int) -> list[str | None]:
    """The thought preceding each gold step in the ReAct reference (None where there is none)."""
    thoughts: list[str | None] = []
    last: str | None = None
    for line in reference.split("\n"):
        s = line.strip()
        if s.startswith("Thought:"):
            last = s[len("Thought:"):].strip()
        elif re.match(r"Action\s*\d*\s*:", s):
            thoughts.append(last)
            last = None
    return (thoughts + [None] * n_steps)[:n_steps]

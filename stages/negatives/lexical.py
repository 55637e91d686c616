"""WordNet negatives: lexical perturbations of the gold reasoning or answer (`engines.wordnet`).

The perturbed text keeps the reference layout. Choice and maths items perturb the gold reasoning
(antonyms flip claims, hypernyms blur them) and end in a wrong final answer, the same distractor or
nearby number a rule-based negative of that slot would use, since a lexical edit alone cannot change a
letter or a number. Free-text items perturb the answer. Tool items perturb the thoughts and the
string values of the action inputs (a changed argument value makes the call wrong). Code items get
none: swapping words in code or comments changes nothing the tests see. Items without text to perturb
(no reasoning) are skipped and counted.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from engines.wordnet import SwapKind, Transformation, make_swaps
from stages.negatives.answers import (
    format_reasoned,
    react_text,
    reasoning_of,
    reference_thoughts,
    replace_number,
    stable_int,
    target_letters,
    tool_steps,
    wrong_numbers,
)

log = logging.getLogger(__name__)


def _perturb(text: str, swaps: list[Transformation], start: int, rng: random.Random) -> str | None:
    """The first swap kind (from ``start``, cycling) that changes ``text``."""
    for k in range(len(swaps)):
        out = swaps[(start + k) % len(swaps)].transform(text, rng)
        if out:
            return out[0]
    return None


def _protected(example: dict[str, Any]) -> frozenset[str]:
    """Option texts' words and the answer's words stay: the negative must not rename what it argues for."""
    words = " ".join((example.get("options") or []) + [example.get("answer") or ""]).lower().split()
    return frozenset(w.strip(".,;:!?()\"'") for w in words)


def _tool(example: dict[str, Any], swaps: list[Transformation], start: int, rng: random.Random) -> str | None:
    steps = tool_steps(example)
    if not steps:
        return None
    thoughts = reference_thoughts(example.get("reference") or "", len(steps))
    changed = False
    new_thoughts: list[str | None] = []
    for t in thoughts:
        p = _perturb(t, swaps, start, rng) if t else None
        changed |= p is not None
        new_thoughts.append(p or t)
    new_steps = []
    for step in steps:
        args = step["action_input"]
        if isinstance(args, dict):
            args = dict(args)
            for key in sorted(args):
                if isinstance(args[key], str):
                    p = _perturb(args[key], swaps, start, rng)
                    if p is not None:
                        args[key], changed = p, True
        new_steps.append({"action": step["action"], "action_input": args})
    return react_text(new_steps, new_thoughts) if changed else None


def wordnet_candidates(example: dict[str, Any], n: int, seed: int, kinds: tuple[SwapKind, ...],
                       max_swaps: int) -> list[tuple[int, str, str]]:
    """Up to n (slot, kind, text) WordNet negatives of one item, distinct texts."""
    family = example["family"]
    if family == "code" or n < 1:
        return []
    swaps = make_swaps(kinds, max_swaps, _protected(example))
    offset = stable_int("wordnet", seed, example["id"]) % len(swaps)
    reasoning = reasoning_of(example)
    letters = target_letters(example, n, seed) if family == "mcqa" else []
    numbers = (wrong_numbers(example["answer"], n, random.Random(stable_int("numbers", seed, example["id"])))
               if family == "math" else [])
    out: list[tuple[int, str, str]] = []
    seen = {example["reference"].strip()}
    for slot in range(n):
        rng = random.Random(stable_int("wordnet-rng", seed, example["id"], slot))
        start = (offset + slot) % len(swaps)
        wrong = letters[slot] if letters else numbers[slot] if numbers else None
        text = _one(example, reasoning, swaps, start, rng, wrong)
        if text is not None and text.strip() not in seen:
            seen.add(text.strip())
            out.append((slot, swaps[start].name, text))
    return out


def _one(example: dict[str, Any], reasoning: str | None, swaps: list[Transformation], start: int,
         rng: random.Random, wrong: str | None) -> str | None:
    """One negative: perturbed text in the reference layout, ending in ``wrong`` for choice/maths items."""
    family = example["family"]
    if family == "tool":
        return _tool(example, swaps, start, rng)
    if family == "free":
        answer = _perturb(example["answer"], swaps, start, rng)
        return format_reasoned(answer, reasoning) if answer else None
    if not reasoning or wrong is None or family not in ("mcqa", "math"):
        return None
    edited = _perturb(reasoning, swaps, start, rng)
    if edited is None:
        return None
    if family == "math":
        edited = replace_number(edited, example["answer"].strip(), wrong)
    return format_reasoned(wrong, edited)

"""LLM negatives: prompts asking a model for a plausible wrong answer, and the parsers of its reply.

One prompt per (item, slot), asking for a JSON object (REFERENCE-UNISD §3.3, with its defects fixed):

- MCQA: argue confidently for a target distractor; targets cycle through all distractors from an
  item-specific offset (`answers.target_letters`);
- maths: a plausible step-by-step solution that reaches a given nearby wrong number;
- code: the gold function rewritten with one subtle bug of a given kind (off-by-one, wrong operator,
  missing edge case, wrong return value), asked for as JSON (the reference asked for raw code inside a
  JSON schema, and its prompt had a stray line);
- tool use: a wrong tool, or the right tool with wrong arguments;
- free text: none (a wrong free-text answer cannot be verified, so the other sources cover it).

`parse_reply` turns a reply into a negative in the item's reference layout, or None when nothing usable
came back (the caller regenerates). Parsing is lenient (`stages.induction.llm.parse_json_object`) and
falls back to plain "Answer: X" lines, fenced code and ReAct lines.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from stages.evaluate.scoring import extract_choice, extract_code, extract_number, parse_tool_calls
from stages.induction.llm import field_text, parse_json_object
from stages.negatives.answers import (
    format_reasoned,
    react_text,
    stable_int,
    target_letters,
    tool_steps,
    wrong_numbers,
)

BUG_KINDS = ("an off-by-one error", "a wrong comparison or arithmetic operator", "a missing edge case",
             "a wrong return value")
TOOL_MISTAKES = ("call a different tool than the one the request needs",
                 "call the right tool with wrong or missing arguments")
_JSON_REPLY = "Reply with only a JSON object: "


@dataclass(frozen=True)
class Target:
    """What slot ``slot`` of an item asks the model for."""

    slot: int
    goal: str
    """The wrong letter, the wrong number, the bug kind or the tool mistake."""


def targets(example: dict[str, Any], n: int, seed: int) -> list[Target]:
    """The n slot targets of one item (empty when the item admits no wrong answer, e.g. 1 option)."""
    family = example["family"]
    if family == "mcqa":
        return [Target(j, t) for j, t in enumerate(target_letters(example, n, seed))]
    if family == "math":
        rng = random.Random(stable_int("numbers", seed, example["id"]))
        return [Target(j, t) for j, t in enumerate(wrong_numbers(example["answer"], n, rng))]
    kinds = BUG_KINDS if family == "code" else TOOL_MISTAKES if family == "tool" else ()
    if not kinds:
        return []
    offset = stable_int("llm-kind", seed, example["id"]) % len(kinds)
    return [Target(j, kinds[(offset + j) % len(kinds)]) for j in range(n)]


def build_prompt(example: dict[str, Any], target: Target) -> str:
    """The user turn asking for the negative of ``target``."""
    family, prompt = example["family"], example["prompt"].strip()
    if family == "mcqa":
        idx = ord(target.goal) - ord("A")
        option = (example.get("options") or [])[idx]
        return (f"{prompt}\n\nWrite a convincing but WRONG solution to the question above: argue "
                f"confidently, in 2 to 4 sentences and without hedging, that the correct option is "
                f"{target.goal} ({option}). Never say or hint that it is wrong.\n\n{_JSON_REPLY}"
                f'{{"reasoning": "<your argument>", "answer": "{target.goal}"}}')
    if family == "math":
        return (f"{prompt}\n\nWrite a plausible but WRONG step-by-step solution to the problem above that "
                f"ends with the result {target.goal}. Make one natural-looking mistake (a wrong operation, "
                f"a misread quantity or an arithmetic slip) and do not point it out.\n\n{_JSON_REPLY}"
                f'{{"reasoning": "<the steps>", "answer": "{target.goal}"}}')
    if family == "code":
        return (f"{prompt}\n\nA correct solution:\n```python\n{example['reference'].strip()}\n```\n\n"
                f"Rewrite this solution with {target.goal} so that it still runs but fails some tests. Keep "
                "the function name and signature, and do not add comments that reveal the bug.\n\n"
                f'{_JSON_REPLY}{{"reasoning": "<one sentence on the change>", "code": "<the full function>"}}')
    gold = react_text(tool_steps(example))
    return (f"{prompt}\n\nThe correct tool calls are:\n{gold}\n\nWrite a plausible but WRONG tool call "
            f"instead: {target.goal}. Do not say that it is wrong.\n\n{_JSON_REPLY}"
            '{"thought": "<your reasoning>", "action": "<tool name>", "action_input": {"<argument>": "<value>"}}')


def _min_words(text: str | None, n: int = 3) -> bool:
    return text is not None and len(text.split()) >= n


def parse_reply(example: dict[str, Any], text: str) -> str | None:
    """The negative in the item's reference layout, or None when the reply holds no usable answer."""
    family = example["family"]
    obj = parse_json_object(text)
    if family in ("mcqa", "math"):
        reasoning = field_text(obj, text, "reasoning", "explanation", "rationale", "steps")
        raw_answer = field_text(obj, text, "answer", "final_answer", "result")
        if family == "mcqa":
            n = len(example.get("options") or [])
            answer = extract_choice(raw_answer, n) if raw_answer else None
            if answer is None and obj is None:
                answer = extract_choice(text, n)
        else:
            answer = extract_number(raw_answer) if raw_answer else None
            if answer is None and obj is None:
                answer = extract_number(text)
        if reasoning is None and obj is None:
            reasoning = text.split("Answer:", 1)[0].strip() or None
        if answer is None or not _min_words(reasoning):
            return None
        return format_reasoned(answer, " ".join(reasoning.split()))
    if family == "code":
        return _parse_code(example, obj, text)
    if family == "tool":
        return _parse_tool(obj, text)
    return None


def _parse_code(example: dict[str, Any], obj: dict[str, Any] | None, text: str) -> str | None:
    entry = json.loads(example.get("meta") or "{}").get("entry_point") or example["answer"]
    code = field_text(obj, text, "code", "solution", "answer")
    if code is not None and "```" in code:
        code = extract_code(code, entry)
    if code is None or f"def {entry}" not in code:
        code = extract_code(text, entry)
    if f"def {entry}" not in code:
        return None
    return code.strip("\n") + "\n"


def _parse_tool(obj: dict[str, Any] | None, text: str) -> str | None:
    thought = field_text(obj, text, "thought", "reasoning")
    steps = None
    if obj is not None:
        action = field_text(obj, text, "action", "tool", "name")
        args = obj.get("action_input", obj.get("arguments", {}))
        if isinstance(args, str):
            parsed = parse_json_object(args)
            args = parsed if parsed is not None else args
        if action:
            steps = [{"action": action, "action_input": args}]
    if steps is None:
        steps = parse_tool_calls(text)
    if not steps:
        return None
    return react_text(steps, [thought] if thought else None)

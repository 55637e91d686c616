"""Meta-prompts for instruction induction and the parser of the model's reply.

A meta-prompt shows D solved training demonstrations and asks for ONE general instruction (3-4
sentences) that would help solve any new problem of the same task, as plain text after an
"Instruction:" cue (small models answer a JSON request with malformed objects far more often than
with prose; a JSON reply ``{"instruction": "..."}`` is still understood). The instruction is later placed in an auxiliary teacher context that has
no reference solution, so the meta-prompt forbids mentioning examples, answers, option letters,
numbers, code and any "reference solution" (REFERENCE-UNISD §8.10).
"""

from __future__ import annotations

import json
import re
from typing import Any

from stages.induction.llm import field_text, parse_json_object

FAMILY_TASK = {
    "mcqa": "multiple-choice questions",
    "math": "maths word problems with a numeric answer",
    "code": "Python programming tasks",
    "tool": "requests answered by calling tools (APIs)",
    "free": "questions with a short free-text answer",
}
TRUNCATION_MARK = " [...]"


def _clip(text: str, limit: int) -> tuple[str, bool]:
    text = text.strip()
    if len(text) <= limit:
        return text, False
    return text[:limit].rstrip() + TRUNCATION_MARK, True


def demo_problem(example: dict[str, Any]) -> str:
    """The problem a demonstration shows: tool items show the user request, not the API documentation."""
    if example["family"] == "tool":
        meta = json.loads(example.get("meta") or "{}")
        if meta.get("instruction"):
            return str(meta["instruction"])
    return example["prompt"]


def meta_prompt(family: str, demos: list[dict[str, Any]], max_demo_chars: int) -> tuple[str, int]:
    """(prompt, number of demonstration fields shortened to ``max_demo_chars``)."""
    clipped = 0
    blocks = []
    for i, ex in enumerate(demos, 1):
        problem, c1 = _clip(demo_problem(ex), max_demo_chars)
        solution, c2 = _clip(ex["reference"], max_demo_chars)
        clipped += c1 + c2
        blocks.append(f"### Example {i}\nProblem:\n{problem}\n\nSolution:\n{solution}")
    task = FAMILY_TASK.get(family, "problems")
    prompt = (
        f"Below are {len(demos)} solved examples of one task: {task}.\n\n" + "\n\n".join(blocks) + "\n\n"
        "Write ONE general instruction, 3 to 4 sentences, that tells a solver how to approach ANY new "
        "problem of this task: what to pay attention to, how to reason, and how to present the final "
        "answer. Keep it general: do not mention these examples, their answers, option letters, numbers, "
        "names or code, and do not refer to any reference or example solution.\n\nInstruction:"
    )
    return prompt, clipped


_LABEL = re.compile(r"^\s*(?:#+\s*)?(?:general\s+)?instruction\s*:\s*", re.IGNORECASE | re.MULTILINE)


def parse_instruction(text: str) -> str | None:
    """The instruction in a reply: the JSON ``instruction`` field, else text after "Instruction:", else
    the whole reply when it is prose (no braces); whitespace collapsed, surrounding quotes removed."""
    obj = parse_json_object(text)
    value = field_text(obj, text, "instruction", "Instruction", "text")
    if value is None:
        m = list(_LABEL.finditer(text))
        if m:
            value = text[m[-1].end():]
        elif "{" not in text:
            value = text
    if value is None:
        return None
    value = " ".join(value.split()).strip().strip("\"'`").strip()
    return value or None

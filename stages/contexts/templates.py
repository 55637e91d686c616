"""Prompt layouts of the teacher views (REFERENCE §1.1, §2.1, §3.2).

* privileged: the student text, "This is an example for a response to the question:", the
  reference, then the self-distillation instruction (SDI).
* negative:   exactly the privileged layout with the reference replaced by a wrong one, so the good
  and bad teachers differ only in the reference text (the reference's wording differences gave the
  contrastive loss a surface shortcut, §8.10).
* auxiliary (random / retrieval): solved donor examples under a "do not solve these" header, then
  the task; never the item's own reference.
* auxiliary (induction): a general instruction, then the task; no "study the reference" wording,
  since there is no reference in it (§8.10).
"""

from __future__ import annotations

REFERENCE_INTRO = "This is an example for a response to the question:"
SDI = "Carefully study the reference solution, then solve the problem below with your own approach."
TOOL_SUFFIX = "Include your thought process (the 'Thought' field in your response)."
AUX_HEADER = "## Reference Samples (DO NOT SOLVE THESE)"
AUX_WARNING = ("The solved examples below only show the expected kind of answer. Do not answer them; "
               "answer only the task at the end.")
TASK_HEADER = "## Task to Solve (ONLY ANSWER THIS TASK)"
INDUCTION_HEADER = "## General Instruction for Your Answer"


def privileged_view(student_text: str, reference: str, instruction: str, family: str) -> str:
    """The teacher prompt c; `reference` is the gold (privileged) or a wrong one (negative view)."""
    tail = f"{instruction} {TOOL_SUFFIX}" if family == "tool" else instruction
    return f"\n{student_text}\n\n{REFERENCE_INTRO}\n{reference}\n\n{tail}"


def donor_block(index: int, prompt: str, reference: str) -> str:
    return f"### Example {index}\nTask:\n{prompt}\n\nSolution:\n{reference}"


def donor_view(student_text: str, donors: list[tuple[str, str]]) -> str:
    """Auxiliary view from (prompt, reference) donor pairs."""
    blocks = "\n\n".join(donor_block(i + 1, p, r) for i, (p, r) in enumerate(donors))
    return f"{AUX_HEADER}\n{AUX_WARNING}\n\n{blocks}\n\n{TASK_HEADER}\n{student_text}"


def induction_view(student_text: str, instruction: str) -> str:
    return f"{INDUCTION_HEADER}\n{instruction.strip()}\n\n{TASK_HEADER}\n{student_text}"

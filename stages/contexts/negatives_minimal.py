"""Minimal negatives builder: rule-based corruptions of the gold reference (source ``corrupt``).

A negative is a plausible wrong demonstration in the same shape as the gold reference, so the
negative view differs from the privileged view only in what the reference says:

* MCQA: another option's letter (with the option text in the reasoning line when the gold
  reference has one); verified wrong, since the letter differs from the answer.
* maths: the gold number perturbed (±1, ±2, ×2, +10, sign), replaced everywhere it occurs in the
  reference; verified wrong, since the value differs.
* code: the gold code with one comparison flipped (``<`` ↔ ``>=``, ``==`` ↔ ``!=``, ``in`` ↔
  ``not in``, …) or its first return value replaced by ``None``; not verified (no execution here).

Tool-use and free-form items get no negative. A fuller builder (LLM negatives, WordNet swaps) will
write the same table.
"""

from __future__ import annotations

import ast
import logging
import math
import random
import re
from dataclasses import dataclass

import pyarrow as pa

import schemas
from storage import StageSpec

log = logging.getLogger(__name__)

SPEC = StageSpec(name="negatives", version=1, inputs={"examples": schemas.EXAMPLES},
                 outputs={"negatives": schemas.NEGATIVES})

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FLIP = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq,
         ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


@dataclass(frozen=True)
class NegativesConfig:
    """How many corrupted references to write per example."""

    num_negatives: int = 2
    """Negatives per example (fewer when an item admits fewer distinct corruptions)."""
    seed: int = 0
    """Seeds which corruptions are kept."""
    split: str = "train"
    """Split to build negatives for (the split that is trained on)."""

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")


def mcqa_negatives(item: dict) -> list[tuple[str, str | None, bool | None]]:
    """(text, wrong_answer, verified_wrong) for every other option."""
    options = item.get("options") or []
    out = []
    for i, option in enumerate(options):
        letter = LETTERS[i]
        if letter == item["answer"]:
            continue
        if "Reasoning:" in item["reference"]:
            text = f"Reasoning: Option {letter} ({option.strip()}) is the correct answer.\nAnswer: {letter}"
        else:
            text = f"Answer: {letter}"
        out.append((text, letter, True))
    return out


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def math_negatives(item: dict) -> list[tuple[str, str | None, bool | None]]:
    """Perturbed final numbers substituted into the reference."""
    gold = item["answer"].strip()
    value = _number(gold)
    if value is None:
        return []
    candidates = [value + 1, value - 1, value + 2, value * 2, value + 10, -value]
    seen, out = {value}, []
    pattern = re.compile(rf"(?<![\d.]){re.escape(gold)}(?!\.?\d)")
    for wrong in candidates:
        if wrong in seen:
            continue
        seen.add(wrong)
        wrong_text = str(wrong) if isinstance(wrong, int) else f"{wrong:g}"
        text, count = pattern.subn(wrong_text, item["reference"])
        if count == 0:
            text = f"Answer: {wrong_text}"
        out.append((text, wrong_text, True))
    return out


def code_negatives(item: dict, limit: int = 8) -> list[tuple[str, str | None, bool | None]]:
    """The gold code with one comparison flipped, or its first return value replaced by None."""
    code = item["reference"]
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    original = ast.unparse(tree)
    variants = []
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare) and type(n.ops[0]) in _FLIP]
    for i in range(min(len(compares), limit)):
        copy = ast.parse(code)
        node = [n for n in ast.walk(copy) if isinstance(n, ast.Compare) and type(n.ops[0]) in _FLIP][i]
        node.ops[0] = _FLIP[type(node.ops[0])]()
        variants.append(ast.unparse(copy))
    copy = ast.parse(code)
    returns = [n for n in ast.walk(copy) if isinstance(n, ast.Return) and n.value is not None]
    if returns and not (isinstance(returns[0].value, ast.Constant) and returns[0].value.value is None):
        returns[0].value = ast.Constant(None)
        variants.append(ast.unparse(copy))
    unique = list(dict.fromkeys(v for v in variants if v != original))
    return [(v + "\n", None, None) for v in unique]


CORRUPTIONS = {"mcqa": mcqa_negatives, "math": math_negatives, "code": code_negatives}


def run(cfg: NegativesConfig, examples: pa.Table) -> dict[str, pa.Table]:
    """Up to `num_negatives` corruptions per example of `cfg.split` (seeded choice among candidates)."""
    rows, skipped = [], 0
    for item in sorted((r for r in examples.to_pylist() if r["split"] == cfg.split), key=lambda r: r["id"]):
        build = CORRUPTIONS.get(item["family"])
        candidates = build(item) if build else []
        if not candidates:
            skipped += 1
            continue
        random.Random(f"negatives:{cfg.seed}:{item['id']}").shuffle(candidates)
        for j, (text, wrong, verified) in enumerate(candidates[: cfg.num_negatives]):
            rows.append({"id": item["id"], "neg_id": j, "source": "corrupt", "text": text,
                         "wrong_answer": wrong, "verified_wrong": verified})
    if skipped:
        log.info("negatives: %d examples admit no rule-based corruption (tool/free or unparsable)", skipped)
    return {"negatives": schemas.conform(rows, schemas.NEGATIVES)}

"""Rule-based negatives: deterministic edits of the gold reference that make it wrong.

- MCQA: the gold reasoning with a wrong final letter (``swap_letter``), with one claim negated
  (``negate_claim``) or with a step dropped (``drop_step``), always ending in a distractor letter;
- maths: a wrong final number (``swap_number``), one intermediate number altered with the result
  following it (``alter_step``), or a step dropped (``drop_step``);
- code (on the AST of the gold function): a comparison operator flipped (``flip_comparison``), an
  integer constant off by one (``off_by_one``), or a ``return`` replaced by a constant
  (``return_constant``);
- tool use: a different tool (``wrong_action``), a dropped or altered argument (``wrong_args``), or a
  dropped step (``drop_step``);
- free text: one claim negated or one step dropped.

Strategies cycle per slot from an item-specific offset; when one does not apply to an item, the next
is tried. Whether the result is really wrong is decided afterwards by `stages.negatives.verify`.
"""

from __future__ import annotations

import ast
import copy
import random
import re
from typing import Any

from stages.negatives.answers import (
    drop_sentence,
    format_reasoned,
    negate_claim,
    react_text,
    reasoning_of,
    reference_thoughts,
    replace_number,
    stable_int,
    target_letters,
    tool_actions,
    tool_steps,
    wrong_numbers,
)

STRATEGIES = {
    "mcqa": ("swap_letter", "negate_claim", "drop_step"),
    "math": ("swap_number", "alter_step", "drop_step"),
    "code": ("flip_comparison", "off_by_one", "return_constant"),
    "tool": ("wrong_action", "wrong_args", "drop_step"),
    "free": ("negate_claim", "drop_step"),
}

_FLIPS: dict[type, type] = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
                            ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            out.add(id(body[0].value))
    return out


def _sites(tree: ast.AST, strategy: str) -> list[ast.AST]:
    inside = [n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f]
    if strategy == "flip_comparison":
        return [n for n in inside if isinstance(n, ast.Compare) and type(n.ops[0]) in _FLIPS]
    if strategy == "off_by_one":
        skip = _docstrings(tree)
        return [n for n in inside if isinstance(n, ast.Constant) and type(n.value) is int and id(n) not in skip]
    if strategy == "return_constant":
        return [n for n in inside if isinstance(n, ast.Return) and n.value is not None]
    raise ValueError(f"unknown code strategy {strategy!r}")


def _constant_for(value: ast.AST, rng: random.Random) -> ast.Constant:
    if isinstance(value, (ast.Compare, ast.BoolOp)) or (isinstance(value, ast.UnaryOp)
                                                        and isinstance(value.op, ast.Not)):
        return ast.Constant(rng.choice([True, False]))
    if isinstance(value, ast.Constant):
        v = value.value
        if isinstance(v, bool):
            return ast.Constant(not v)
        if isinstance(v, str):
            return ast.Constant("" if v else "x")
        return ast.Constant(0 if v is None else None)
    if isinstance(value, (ast.List, ast.ListComp, ast.Tuple, ast.Dict, ast.Set, ast.DictComp, ast.SetComp)):
        return ast.Constant(None)
    return ast.Constant(0)


def corrupt_code(code: str, strategy: str, rng: random.Random) -> str | None:
    """``code`` with one ``strategy`` edit at a random site, or None when the code has no such site."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    tree = copy.deepcopy(tree)
    sites = _sites(tree, strategy)
    if not sites:
        return None
    node = sites[rng.randrange(len(sites))]
    if isinstance(node, ast.Compare):
        node.ops[0] = _FLIPS[type(node.ops[0])]()
    elif isinstance(node, ast.Constant):
        node.value = node.value + rng.choice([1, -1]) if node.value else 1
    elif isinstance(node, ast.Return):
        node.value = _constant_for(node.value, rng)
    out = ast.unparse(ast.fix_missing_locations(tree))
    return out + "\n" if out.strip() != ast.unparse(ast.parse(code)).strip() else None


def _wrong_answer(example: dict[str, Any], slot: int, seed: int) -> str | None:
    """The wrong final answer of slot ``slot``: a distractor letter or a nearby wrong number."""
    if example["family"] == "mcqa":
        targets = target_letters(example, slot + 1, seed)
        return targets[-1] if targets else None
    rng = random.Random(stable_int("numbers", seed, example["id"]))
    return wrong_numbers(example["answer"], slot + 1, rng)[-1]


def _reasoned(example: dict[str, Any], strategy: str, slot: int, seed: int, rng: random.Random) -> str | None:
    """A choice or maths negative: the gold reasoning (maybe edited) ending in a wrong answer."""
    wrong = _wrong_answer(example, slot, seed)
    reasoning = reasoning_of(example)
    if wrong is None:
        return None
    if strategy in ("swap_letter", "swap_number"):
        return format_reasoned(wrong, reasoning)
    if not reasoning:
        return None
    if strategy == "negate_claim":
        edited = negate_claim(reasoning, rng)
    elif strategy == "drop_step":
        edited = drop_sentence(reasoning, rng)
    else:
        edited = _alter_number(reasoning, example["answer"], wrong, rng)
    return format_reasoned(wrong, edited) if edited else None


def _free(example: dict[str, Any], strategy: str, rng: random.Random) -> str | None:
    """A free-text negative: the answer itself negated or shortened (the reasoning kept)."""
    answer, reasoning = example["answer"], reasoning_of(example)
    edited = negate_claim(answer, rng) if strategy == "negate_claim" else drop_sentence(answer, rng)
    return format_reasoned(edited, reasoning) if edited else None


_NUM = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.]?\d)")


def _alter_number(reasoning: str, gold: str, wrong: str, rng: random.Random) -> str | None:
    """One intermediate number changed by a small amount, and the gold result replaced by ``wrong``."""
    numbers = [m for m in _NUM.finditer(reasoning) if m[0] != gold]
    if not numbers:
        return None
    m = numbers[rng.randrange(len(numbers))]
    delta = rng.choice([1, 2, -1]) if float(m[0]) > 2 else rng.choice([1, 2])
    new = str(int(m[0]) + delta) if "." not in m[0] else f"{float(m[0]) + delta:g}"
    text = reasoning[:m.start()] + new + reasoning[m.end():]
    return replace_number(text, gold, wrong)


def _tool(example: dict[str, Any], strategy: str, rng: random.Random) -> str | None:
    steps = tool_steps(example)
    if not steps:
        return None
    thoughts = reference_thoughts(example.get("reference") or "", len(steps))
    steps = copy.deepcopy(steps)
    i = rng.randrange(len(steps))
    if strategy == "wrong_action":
        others = [a for a in tool_actions(example) if a != steps[i]["action"]]
        if not others:
            return None
        steps[i]["action"] = rng.choice(others)
    elif strategy == "wrong_args":
        args = steps[i]["action_input"]
        if not isinstance(args, dict) or not args:
            return None
        key = rng.choice(sorted(args))
        value = args[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            args[key] = value + rng.choice([1, -1])
        else:
            del args[key]
    elif strategy == "drop_step":
        if len(steps) < 2:
            return None
        del steps[i], thoughts[i]
    return react_text(steps, thoughts)


def corrupt_candidates(example: dict[str, Any], n: int, seed: int) -> list[tuple[int, str, str]]:
    """Up to n (slot, strategy, text) rule-based negatives of one item, distinct texts."""
    family = example["family"]
    strategies = STRATEGIES.get(family, ())
    if not strategies:
        return []
    offset = stable_int("corrupt", seed, example["id"]) % len(strategies)
    out: list[tuple[int, str, str]] = []
    seen = {example["reference"].strip()}
    for slot in range(n):
        rng = random.Random(stable_int("corrupt-rng", seed, example["id"], slot))
        for k in range(len(strategies)):
            strategy = strategies[(offset + slot + k) % len(strategies)]
            text = _apply(example, strategy, slot, seed, rng)
            if text is not None and text.strip() not in seen:
                seen.add(text.strip())
                out.append((slot, strategy, text))
                break
    return out


def _apply(example: dict[str, Any], strategy: str, slot: int, seed: int, rng: random.Random) -> str | None:
    family = example["family"]
    if family == "code":
        return corrupt_code(example["reference"], strategy, rng)
    if family == "tool":
        return _tool(example, strategy, rng)
    if family == "free":
        return _free(example, strategy, rng)
    return _reasoned(example, strategy, slot, seed, rng)


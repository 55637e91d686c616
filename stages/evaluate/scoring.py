"""Answer scorers for the evaluate stage: pull the model's answer out of a completion and grade it.

Pure functions, except that code is graded by running it in `engines.sandbox` (never in-process).
A completion longer than ``max_completion_chars`` is not looked at: it scores 0 with the status
``too_long`` in its detail (whatever the family), so no regex, compiler or sandbox sees it.
Families and their score (mean score per dataset is the reported metric):

- ``mcqa``: the option letter (`extract_choice`); 1 if it equals the gold letter. Unlike the reference
  code, the *last* explicit "Answer: X" wins and a bare article "A" in running text never counts.
- ``math``: the final number (`extract_number`); 1 if `numbers_equal` to the gold number.
- ``code``: the candidate code (`extract_code`; a HumanEval prompt completed by `humaneval_layouts`)
  checked by the example's tests in the sandbox (`engines.sandbox.CodeTask`: the tests run in a process
  of their own and see only plain values returned by the candidate); 1 if the sandbox's checker reports
  ``passed``. Nothing of the candidate is compiled or run in this process.
- ``tool``: `score_tool_use` (action, argument and full accuracy of REFERENCE-UNISD §5); the score is
  the full accuracy.
- ``free``: normalised exact match (lower case, no punctuation, no articles); token F1 in the detail.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import string
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, NamedTuple

from engines.sandbox import CodeTask, SandboxLimits, run_many

LETTERS = string.ascii_uppercase
FAMILIES = ("mcqa", "math", "code", "tool", "free")


class RowScore(NamedTuple):
    extracted: str | None
    correct: bool
    score: float
    detail: dict[str, Any]


# --- multiple choice -------------------------------------------------------------------------------

_CONNECT = r"(?:\s*(?:is|was|would\s+be|should\s+be|will\s+be|must\s+be|[:=\-–]|\*\*|__)){0,4}"
_EXPLICIT = re.compile(
    r"(?:\banswer\b(?:\s+(?:choice|option))?|\b(?:correct|right|best|final)\s+(?:option|choice)\b|"
    r"(?P<boxed>\\boxed\{))" + _CONNECT +
    r"\s*(?:(?:option|choice|letter)\s+)?(?P<open>[(\[{])?\s*(?:\*\*)?(?P<letter>[A-Za-z])(?:\*\*)?"
    r"\s*(?P<close>[)\]}])?(?![A-Za-z0-9])(?P<after>[^\n]{0,20})",
    re.IGNORECASE)
_ALONE = re.compile(r"^\s*(?:\*\*|__)?\s*[(\[]?\s*([A-Za-z])\s*[)\].:]?\s*(?:\*\*|__)?\s*$", re.MULTILINE)
_LEADING = re.compile(r"\A\s*(?:\*\*|__)?\s*[(\[]?([A-Z])(?:[)\]]|[.:](?=\s|$))")
_MARKED = re.compile(r"[(\[]([A-Z])[)\]]|\*\*([A-Z])\*\*|\b(?i:option|choice)\s+([A-Z])\b")
_AFTER_WORD = {"is", "because", "since", "as", "which", "and", "or", "for", "was"}


def extract_choice(text: str, num_options: int, options: list[str] | None = None) -> str | None:
    """The chosen option letter (``A``..), or None; letters at or beyond ``num_options`` never count."""
    return _choice(text, num_options, options)[0]


def _choice(text: str, num_options: int, options: list[str] | None) -> tuple[str | None, str]:
    valid = set(LETTERS[:max(0, num_options)])
    explicit = [m for m in _EXPLICIT.finditer(text) if _explicit_ok(m) and m["letter"].upper() in valid]
    if explicit:
        return explicit[-1]["letter"].upper(), "explicit"
    alone = [m[1].upper() for m in _ALONE.finditer(text) if m[1].upper() in valid]
    if alone:
        return alone[-1], "line"
    lead = _LEADING.match(text)
    if lead and lead[1] in valid:
        return lead[1], "leading"
    marked = {next(g for g in m.groups() if g) for m in _MARKED.finditer(text)} & valid
    if len(marked) == 1:
        return marked.pop(), "marked"
    by_text = _choice_by_text(text, options or [])
    if by_text is not None and by_text in valid:
        return by_text, "option_text"
    return None, "none"


def _explicit_ok(m: re.Match) -> bool:
    """Reject the article/pronoun ("Answer: A patient ...", "answer: I think") and lowercase words."""
    letter, after = m["letter"], m["after"] or ""
    bracketed = bool(m["open"] and m["close"]) or bool(m["boxed"] and m["close"])
    if bracketed:
        return True
    word = re.match(r"\s+([a-z]+)", after)
    if letter.islower():
        return not re.match(r"\s*[A-Za-z0-9]", after)
    return not (letter in "AI" and word and word[1] not in _AFTER_WORD)


def _norm_text(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def _choice_by_text(text: str, options: list[str]) -> str | None:
    """The letter of the one option whose text the completion equals or contains (as whole words)."""
    norm = _norm_text(text)
    opts = [(LETTERS[i], _norm_text(o)) for i, o in enumerate(options[:len(LETTERS)]) if _norm_text(o)]
    equal = [letter for letter, o in opts if o == norm]
    if equal:
        return equal[0] if len(equal) == 1 else None
    found = [(letter, o) for letter, o in opts if re.search(rf"(?<!\w){re.escape(o)}(?!\w)", norm)]
    found = [(letter, o) for letter, o in found if not any(o != p and o in p for _, p in found)]
    return found[0][0] if len(found) == 1 else None


# --- numbers ---------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+\b)?"
                     r"(?:\s*/\s*\d+(?![\d.]))?")
_HASHES = re.compile(r"####\s*")
_ANSWER_NUM = re.compile(r"\banswer\b(?:\s*(?:is|was|:|=|\*\*))+\s*", re.IGNORECASE)
_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?[\d.,]+)\s*\}\{\s*(-?[\d.,]+)\s*\}")


def _prepare(text: str) -> str:
    text = text.replace("−", "-").replace("{,}", ",").replace("\\$", "$").replace("\\!", "")
    return _FRAC.sub(r"\1/\2", text)


def _first_number(segment: str) -> str | None:
    m = _NUMBER.search(segment)
    return normalise_number(m[0]) if m else None


def _boxed_contents(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end():i - 1])
    return out


def extract_number(text: str) -> str | None:
    """The final numeric answer: after the last "####", else "Answer: N", else \\boxed{N}, else the last
    number. Normalised (no thousands commas, no trailing ".0"); fractions stay "a/b"."""
    text = _prepare(text)
    for marker in (_HASHES, _ANSWER_NUM):
        for m in reversed(list(marker.finditer(text))):
            rest = text[m.end():].lstrip()
            number = _first_number(rest.split("\n", 1)[0])
            if number is not None:
                return number
    for content in reversed(_boxed_contents(text)):
        number = _first_number(content)
        if number is not None:
            return number
    numbers = _NUMBER.findall(text)
    return normalise_number(numbers[-1]) if numbers else None


def normalise_number(s: str) -> str:
    """"1,234.50" -> "1234.5", "3.0" -> "3", " 6 / 8 " -> "6/8"; anything unparsable is returned stripped."""
    s = s.strip().replace(",", "").replace("$", "").replace(" ", "").lstrip("+")
    if "/" in s:
        return s
    try:
        d = Decimal(s)
    except InvalidOperation:
        return s
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _to_fraction(s: str | None) -> Fraction | None:
    for candidate in () if s is None else (normalise_number(str(s)), extract_number(str(s))):
        with contextlib.suppress(ValueError, ZeroDivisionError, TypeError):
            return Fraction(candidate)  # type: ignore[arg-type]
    return None


def numbers_equal(a: str | None, b: str | None, rel_tol: float = 1e-6) -> bool:
    """Equal as exact fractions, or as floats within ``rel_tol`` ("0.75" == "3/4" == "0.7500001")."""
    fa, fb = _to_fraction(a), _to_fraction(b)
    if fa is None or fb is None:
        return False
    try:
        return fa == fb or math.isclose(float(fa), float(fb), rel_tol=rel_tol, abs_tol=1e-12)
    except OverflowError:
        return False


# --- code ------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+.\-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_LANGS = {"python", "py", "python3", "py3"}
_MAIN_GUARD = re.compile(r"^if\s+__name__\s*==\s*['\"]__main__['\"]\s*:")


def _defines(code: str, name: str, top_level: bool = False) -> bool:
    indent = "" if top_level else r"[ \t]*"
    return re.search(rf"^{indent}(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def extract_code(text: str, entry_point: str | None = None) -> str:
    """Candidate code: the ```python block defining ``entry_point`` (else the longest, the latest on
    ties), else any fenced block (same rule), else the raw text (a body keeps its indentation)."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    for pool in ([b for lang, b in blocks if lang in _PY_LANGS], [b for _, b in blocks]):
        pool = [b for b in pool if b.strip()]
        if not pool:
            continue
        if entry_point:
            defining = [b for b in pool if _defines(b, entry_point)]
            if defining:
                return defining[-1]
        return max(reversed(pool), key=len)
    return re.sub(r"\A(?:[ \t]*\n)+", "", text).rstrip()


def strip_main_guard(code: str) -> str:
    """Drop top-level ``if __name__ == "__main__":`` blocks (demo code that may read stdin or loop)."""
    out, skipping = [], False
    for line in code.split("\n"):
        if _MAIN_GUARD.match(line):
            skipping = True
            continue
        if skipping and (not line.strip() or line[0] in " \t"):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)


def humaneval_layouts(prompt: str, completion_code: str, entry_point: str) -> tuple[str, ...]:
    """Candidate modules for a HumanEval problem, in the order the sandbox tries to compile them.

    A completion that defines ``def entry_point`` at top level is a full function: it follows the prompt
    (whose imports and helper functions it may use; the prompt's stub, a docstring-only function, is
    then redefined). Otherwise the completion is the body and continues the prompt; a body returned
    flush left gets alternative layouts (indent every line by four spaces, or only a first line that
    lost its indentation, then as given). Nothing is compiled here: the sandbox runs the first layout
    that compiles.
    """
    if _defines(completion_code, entry_point, top_level=True):
        return (prompt.rstrip() + "\n\n\n" + completion_code.strip("\n") + "\n",)
    head = prompt.rstrip("\n") + "\n"
    return tuple(dict.fromkeys(head + body + "\n" for body in _body_layouts(completion_code)))


def _body_layouts(code: str) -> list[str]:
    lines = code.strip("\n").split("\n")
    nonblank = [ln for ln in lines if ln.strip()]
    if not nonblank or nonblank[0][0] in " \t":
        return ["\n".join(lines)]
    layouts = ["\n".join(("    " + ln) if ln.strip() else ln for ln in lines)]
    nxt = nonblank[1] if len(nonblank) > 1 else ""
    i = lines.index(nonblank[0])
    indents = dict.fromkeys(["    ", nxt[:len(nxt) - len(nxt.lstrip())]]) if nxt[:1] in (" ", "\t") else {}
    for indent in indents:
        layouts.append("\n".join(lines[:i] + [indent + lines[i]] + lines[i + 1:]))
    return layouts + ["\n".join(lines)]


def humaneval_task(prompt: str, completion_code: str, test: str, entry_point: str) -> CodeTask:
    """The sandbox task of a HumanEval problem: candidate layouts, ``test`` + ``check(entry_point)``,
    and the prompt as the trusted setup the tests may use (helpers such as ``poly``)."""
    return CodeTask(humaneval_layouts(prompt, completion_code, entry_point),
                    test + f"\n\ncheck({entry_point})\n", entry_point, setup=prompt)


def code_task(completion: str, example: dict) -> tuple[str, CodeTask]:
    """(extracted code, sandbox task): the candidate module(s) and the example's tests.

    The tests run apart from the candidate (`engines.sandbox.CodeTask`); a ``def check(...)`` that the
    tests never call is called with the entry point."""
    meta = json.loads(example.get("meta") or "{}")
    entry = meta.get("entry_point")
    code = extract_code(completion, entry)
    candidate = strip_main_guard(code)
    prompt = meta.get("humaneval_prompt") or ""
    sources = humaneval_layouts(prompt, candidate, entry or example["answer"]) if prompt else (candidate,)
    tests = example.get("tests") or ""
    calls_check = re.search(r"^check\(", tests, re.MULTILINE)
    if entry and re.search(r"^def check\(", tests, re.MULTILINE) and not calls_check:
        tests += f"\n\ncheck({entry})\n"
    return code, CodeTask(sources, tests, entry or example.get("answer") or None, setup=prompt)


# --- tool use --------------------------------------------------------------------------------------

_REACT = re.compile(r"Action\s*\d*\s*:\s*(.*?)\s*\n\s*Action\s*\d*\s*Input\s*\d*\s*:\s*", re.DOTALL)
_NAME_KEYS = ("action", "Action", "name", "tool", "tool_name")
_ARG_KEYS = ("action_input", "Action_Input", "Action Input", "arguments", "args", "parameters", "input")


def _json_value(raw: Any) -> Any:
    if not isinstance(raw, str):
        return {} if raw is None else raw
    try:
        return json.loads(raw.strip())
    except json.JSONDecodeError:
        return raw.strip()


def _step(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI tool_calls format
        obj = obj["function"]
    name = next((obj[k] for k in _NAME_KEYS if isinstance(obj.get(k), str)), None)
    if name is None:
        return None
    raw = next((obj[k] for k in _ARG_KEYS if k in obj), None)
    return {"action": name.strip(), "action_input": _json_value(raw)}


def _steps_from_json(obj: Any) -> list[dict[str, Any]] | None:
    if isinstance(obj, dict):
        for key in ("tool_calls", "steps", "actions"):
            if isinstance(obj.get(key), list):
                return _steps_from_json(obj[key])
        step = _step(obj)
        return None if step is None else [step]
    if isinstance(obj, list):
        steps = [_step(x) for x in obj]
        return None if any(s is None for s in steps) else steps  # type: ignore[return-value]
    return None


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """Steps ``[{"action", "action_input"}]`` from JSON (``tool_calls``, a step list or one step) or
    from ReAct text ("Action: X" then "Action Input: {json}"); None if neither is found."""
    decoder = json.JSONDecoder()
    if _REACT.search(text):
        steps = []
        for m in _REACT.finditer(text):
            rest = text[m.end():]
            try:
                value, _ = decoder.raw_decode(rest) if rest[:1] in "{[" else (None, 0)
            except json.JSONDecodeError:
                value = None
            if value is None:
                value = _json_value(rest.split("\n", 1)[0])
            steps.append({"action": m[1].strip(), "action_input": value})
        return steps
    for m in re.finditer(r"[{\[]", text):
        try:
            obj, _ = decoder.raw_decode(text[m.start():])
        except json.JSONDecodeError:
            continue
        steps = _steps_from_json(obj)
        if steps is not None:
            return steps
    return None


def _as_text(v: Any) -> str:
    return v.strip() if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)


def _arg_score(pred: Any, gold: Any) -> float:
    if not isinstance(gold, dict):
        return float(_as_text(pred) == _as_text(gold))
    keys = [k for k, v in gold.items() if v not in (None, "", [], {})]
    if not keys:
        return 1.0
    pred = pred if isinstance(pred, dict) else {}
    return sum(k in pred and _as_text(pred[k]) == _as_text(gold[k]) for k in keys) / len(keys)


def score_tool_use(predicted: str, gold_steps_json: str) -> dict[str, Any]:
    """Tool-use accuracy of one completion (REFERENCE-UNISD §5).

    - ``action_acc``: 1 if the ordered list of action names equals the gold list exactly;
    - ``arg_acc``: per step, the fraction of the gold step's non-empty argument keys whose values match
      as strings (JSON text for non-strings, whitespace stripped), averaged over steps; 0 when the
      number of steps differs (a non-object gold input must match as a whole);
    - ``full_acc``: 1 if both are 1.
    """
    gold = _steps_from_json(json.loads(gold_steps_json))
    if gold is None:
        raise ValueError("score_tool_use: gold steps must be a JSON list of {action, action_input} objects")
    pred = parse_tool_calls(predicted) or []
    action = float([s["action"] for s in pred] == [s["action"] for s in gold])
    if len(pred) != len(gold):
        arg = 0.0
    elif not gold:
        arg = 1.0
    else:
        arg = sum(_arg_score(p["action_input"], g["action_input"]) for p, g in zip(pred, gold)) / len(gold)
    return {"action_acc": action, "arg_acc": arg, "full_acc": float(action == 1.0 and arg == 1.0),
            "pred_steps": len(pred), "gold_steps": len(gold)}


# --- free text -------------------------------------------------------------------------------------

def _norm_free(s: str) -> list[str]:
    s = "".join(c for c in s.lower() if c not in string.punctuation)
    return [w for w in s.split() if w not in ("a", "an", "the")]


def _free(completion: str, answer: str) -> RowScore:
    marks = list(re.finditer(r"\banswer\b(?:\s*(?:is|:))+\s*(.+)", completion, re.IGNORECASE))
    extracted = (marks[-1][1] if marks else completion).strip() or None
    pred, gold = _norm_free(extracted or ""), _norm_free(answer)
    common = sum(min(pred.count(w), gold.count(w)) for w in set(pred))
    f1 = 0.0 if not common else 2 * common / (len(pred) + len(gold))
    correct = pred == gold
    return RowScore(extracted, correct, float(correct), {"f1": f1})


# --- dispatch --------------------------------------------------------------------------------------

def _score_simple(family: str, completion: str, example: dict) -> RowScore:
    answer = example["answer"]
    if family == "mcqa":
        options = example.get("options") or []
        letter, rule = _choice(completion, len(options) or len(LETTERS), options)
        correct = letter is not None and letter == answer.strip().upper()
        return RowScore(letter, correct, float(correct), {"rule": rule})
    if family == "math":
        number = extract_number(completion)
        correct = numbers_equal(number, answer)
        return RowScore(number, correct, float(correct), {})
    if family == "tool":
        detail = score_tool_use(completion, example.get("tests") or "[]")
        steps = parse_tool_calls(completion)
        extracted = None if steps is None else json.dumps(steps, ensure_ascii=False, sort_keys=True)
        return RowScore(extracted, detail["full_acc"] == 1.0, detail["full_acc"], detail)
    if family == "free":
        return _free(completion, answer)
    raise ValueError(f"unknown task family {family!r}; expected one of {', '.join(FAMILIES)}")


DEFAULT_MAX_COMPLETION_CHARS = 100_000


def _too_long(completion: str, limit: int) -> RowScore:
    return RowScore(None, False, 0.0, {"status": "too_long", "error": f"completion of {len(completion)} "
                                       f"characters is above max_completion_chars={limit}; not scored"})


def score_rows(rows: list[tuple[str, str, dict]], limits: SandboxLimits | None = None, workers: int = 2,
               allow_unsandboxed: bool = False,
               max_completion_chars: int = DEFAULT_MAX_COMPLETION_CHARS) -> list[RowScore]:
    """Score ``(family, completion, example)`` rows; code runs ``workers`` tasks at a time in the sandbox
    (default limits: `SandboxLimits()`; `engines.sandbox.SandboxUnavailable` if it cannot run here and
    ``allow_unsandboxed`` is false). The detail of a code row holds the sandbox status, the checker's
    note and the program's stderr tail."""
    out: list[RowScore | None] = [None] * len(rows)
    code_rows: list[tuple[int, str]] = []
    tasks: list[CodeTask] = []
    for i, (family, completion, example) in enumerate(rows):
        if len(completion) > max_completion_chars:
            out[i] = _too_long(completion, max_completion_chars)
        elif family == "code":
            code, task = code_task(completion, example)
            code_rows.append((i, code))
            tasks.append(task)
        else:
            out[i] = _score_simple(family, completion, example)
    results = run_many(tasks, limits or SandboxLimits(), workers, allow_unsandboxed) if tasks else []
    for (i, code), res in zip(code_rows, results):
        detail = {"status": res.status, "returncode": res.returncode, "duration_s": round(res.duration_s, 3),
                  "checker": res.checker[-1000:], "stderr": res.stderr[-1000:]}
        out[i] = RowScore(code or None, res.passed, float(res.passed), detail)
    return out  # type: ignore[return-value]


def score_row(family: str, completion: str, example: dict, limits: SandboxLimits | None = None,
              allow_unsandboxed: bool = False) -> RowScore:
    """(extracted, correct, score, detail) for one completion of one ``examples`` row."""
    return score_rows([(family, completion, example)], limits, workers=1, allow_unsandboxed=allow_unsandboxed)[0]

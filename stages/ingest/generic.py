"""The `local` adapter: your own JSONL/Parquet/CSV data, in any column layout, for any family.

``columns`` maps example fields to your column names (unmapped fields use their own name). What each
family needs (the rest is optional):

- mcqa: prompt (the question), options (a list column, a JSON list string, or several comma-separated
  columns such as "opa,opb,opc,opd") and answer (a letter, the exact option text, or a 0-based index;
  integers are indices, strings are tried as letter, then option text, then index); optional context
  and rationale. The prompt is wrapped in the shared MCQA template.
- math: prompt and answer; optional rationale. The prompt is wrapped in the maths template.
- code: prompt (used as given), reference (gold code) and tests (program run after the candidate);
  answer defaults to the first function defined in the reference.
- free: prompt (used as given) and answer or reference.
- tool: prompt (used as given), reference (gold ReAct text) and tests (JSON list of gold steps).

Any bad row stops the stage with one line naming the row and the column.
"""

from __future__ import annotations

import json
import re
from typing import Any

from stages.ingest.config import IngestConfig
from stages.ingest.formats import (
    LETTERS,
    Draft,
    RecordError,
    dumps,
    letter_of,
    math_prompt,
    mcqa_prompt,
    optional_text,
    reference,
)


class _Row:
    """Column access for one record under the configured mapping, with errors naming the column."""

    def __init__(self, rec: dict[str, Any], columns: dict[str, str]) -> None:
        self.rec, self.columns = rec, columns

    def column(self, field: str) -> str:
        return self.columns.get(field, field)

    def raw(self, field: str) -> Any:
        value = self.rec.get(self.column(field))
        return None if value == "" else value

    def get(self, field: str) -> str | None:
        return optional_text(self.raw(field))

    def need(self, field: str) -> str:
        col = self.column(field)
        if col not in self.rec:
            have = ", ".join(sorted(map(str, self.rec)))
            raise RecordError(f"missing column {col!r} (field {field}; columns present: {have})")
        value = optional_text(self.raw(field))
        if value is None:
            raise RecordError(f"column {col!r} (field {field}) is empty")
        return value


def _options(row: _Row) -> list[str]:
    col = row.column("options")
    if "," in col:
        values: Any = [row.rec.get(c.strip()) for c in col.split(",")]
        missing = [c.strip() for c in col.split(",") if c.strip() not in row.rec]
        if missing:
            raise RecordError(f"missing column {missing[0]!r} (field options)")
    else:
        values = row.raw("options")
        if isinstance(values, str):
            try:
                values = json.loads(values)
            except json.JSONDecodeError:
                raise RecordError(f"column {col!r} (field options) is not a JSON list") from None
        if values is None:
            row.need("options")
    if not isinstance(values, (list, tuple)) or len(values) < 2:
        raise RecordError(f"column {col!r} (field options) must hold at least 2 options")
    options = [optional_text(v) for v in values]
    if None in options:
        raise RecordError(f"column {col!r} (field options): option {LETTERS[options.index(None)]} is empty")
    return options  # type: ignore[return-value]


def _letter(row: _Row, options: list[str]) -> str:
    raw = row.raw("answer")
    col, n = row.column("answer"), len(options)
    if raw is None:
        row.need("answer")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return letter_of(raw, n)
    value = str(raw).strip()
    if len(value) == 1 and value.upper() in LETTERS:
        if value.upper() not in LETTERS[:n]:
            raise RecordError(f"column {col!r}: answer {value!r} is not one of the options "
                              f"A-{LETTERS[n - 1]}")
        return value.upper()
    if value in options:
        return LETTERS[options.index(value)]
    if value.isdigit():
        return letter_of(int(value), n)
    raise RecordError(f"column {col!r}: answer {value!r} is not a letter A-{LETTERS[n - 1]}, "
                      "an option's text or a 0-based index")


def _meta(row: _Row) -> dict[str, Any]:
    raw = row.raw("meta")
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise RecordError(f"column {row.column('meta')!r} (field meta) is not a JSON object") from None
    if not isinstance(raw, dict):
        raise RecordError(f"column {row.column('meta')!r} (field meta) is not a JSON object")
    return raw


def _tests(row: _Row, family: str) -> str:
    raw = row.raw("tests")
    if family == "tool" and isinstance(raw, (list, dict)):
        return dumps(raw)
    tests = row.need("tests")
    if family == "tool":
        try:
            json.loads(tests)
        except json.JSONDecodeError:
            raise RecordError(f"column {row.column('tests')!r} (field tests) is not JSON") from None
    return tests


def local(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """One row of a local file -> example of `cfg.family` (see the module docstring)."""
    row = _Row(rec, dict(cfg.columns))
    family, prompt, rationale = cfg.family, row.need("prompt"), row.get("rationale")
    common = {"key": row.get("id"), "rationale": rationale, "meta": _meta(row)}
    if family == "mcqa":
        options = _options(row)
        letter = _letter(row, options)
        return Draft(prompt=mcqa_prompt(prompt, options, row.get("context")), answer=letter,
                     reference=row.get("reference") or reference(letter, rationale), options=options,
                     **common)
    if family == "math":
        answer = row.need("answer")
        return Draft(prompt=math_prompt(prompt), answer=answer,
                     reference=row.get("reference") or reference(answer, rationale), **common)
    if family == "code":
        gold, tests = row.need("reference"), _tests(row, family)
        m = re.search(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", gold, re.M)
        answer = row.get("answer") or (m.group(1) if m else None)
        if answer is None:
            raise RecordError(f"column {row.column('answer')!r} (field answer) is missing and the "
                              "reference defines no function")
        return Draft(prompt=prompt, reference=gold, answer=answer, tests=tests, **common)
    if family == "tool":
        tests = _tests(row, family)
        steps = json.loads(tests)
        names = [s.get("action") for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
        return Draft(prompt=prompt, reference=row.need("reference"), tests=tests,
                     answer=row.get("answer") or dumps(names), **common)
    answer = row.get("answer") or row.get("reference")
    if answer is None:
        row.need("answer")
    return Draft(prompt=prompt, answer=answer, reference=row.get("reference") or reference(answer, rationale),
                 **common)

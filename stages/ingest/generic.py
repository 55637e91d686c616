"""The `local` adapter: your own JSONL/JSON/Parquet/CSV data or saved dataset, in any layout, any family.

``columns`` maps example fields to your column names. A field the mapping does not name is read from its
own column, else from the usual alternatives: prompt from ``question`` or a chat list in ``messages`` /
``input`` (see `stages.ingest.chat`), answer from ``ideal``, ``target`` or ``label`` (or a chat's final
assistant turn), options from ``choices``. What each family needs (the rest is optional):

- mcqa: prompt (the question), options (a list column, a JSON list string, a letter -> text mapping,
  ``{"label": [...], "text": [...]}``, several comma-separated columns such as "opa,opb,opc,opd", or
  lettered lines ``A. …`` / ``(A) …`` / ``A: …`` inside the prompt) and answer (a letter, ``(C)``, ``C)``,
  ``c) text``, the exact option text, or a 0-based index); optional context and rationale. The question
  is wrapped in the shared MCQA template.
- math: prompt and answer; optional rationale. The prompt is wrapped in the maths template.
- code: prompt (used as given), reference (gold code) and tests (program run after the candidate);
  answer defaults to the first function defined in the reference.
- free: prompt (used as given) and answer or reference.
- tool: prompt (used as given), reference (gold ReAct text) and tests (JSON list of gold steps).

Any bad row stops the stage with one line naming the row and the column (`unisd data check` lists
them all before a run).
"""

from __future__ import annotations

import json
import re
from typing import Any

from stages.ingest import chat
from stages.ingest.config import IngestConfig
from stages.ingest.formats import (
    LETTERS,
    Draft,
    RecordError,
    dumps,
    math_prompt,
    mcqa_prompt,
    optional_text,
    reference,
)

FALLBACKS = {"prompt": ("prompt", "question", "messages", "input"), "answer": ("answer", "ideal", "target", "label"),
             "options": ("options", "choices")}
"""Columns tried in order for a field the mapping does not name (chat lists only for messages/input)."""
_CHAT_ONLY = ("messages", "input")


class _Row:
    """Column access for one record under the configured mapping, with errors naming the column."""

    def __init__(self, rec: dict[str, Any], columns: dict[str, str]) -> None:
        self.rec, self.columns = rec, columns
        self.chat: chat.Chat | None = None
        prompt = self.rec.get(self.column("prompt"))
        if chat.is_chat(prompt):
            self.chat = chat.parse_chat(prompt, self.column("prompt"))

    def column(self, field: str) -> str:
        if field in self.columns:
            return self.columns[field]
        for name in FALLBACKS.get(field, ()):
            value = self.rec.get(name)
            if value not in (None, "") and (name not in _CHAT_ONLY or chat.is_chat(value)):
                return name
        return field

    def raw(self, field: str) -> Any:
        value = self.rec.get(self.column(field))
        return None if value == "" else value

    def get(self, field: str) -> str | None:
        return optional_text(self.raw(field))

    def need(self, field: str) -> str:
        col = self.column(field)
        if col not in self.rec:
            have = ", ".join(sorted(map(str, self.rec)))
            tried = [c for c in FALLBACKS.get(field, ()) if c != col and field not in self.columns]
            also = f"; also looked for {', '.join(tried)}" if tried else ""
            raise RecordError(f"missing column {col!r} (field {field}{also}; columns present: {have})")
        value = optional_text(self.raw(field))
        if value is None:
            raise RecordError(f"column {col!r} (field {field}) is empty")
        return value

    def prompt(self) -> str:
        """The prompt text: the column as given, or the user turn of a chat list."""
        return self.chat.prompt if self.chat is not None else self.need("prompt")

    def answer(self) -> Any:
        """The raw answer: the answer column, else a chat's final assistant turn (None: neither)."""
        raw = self.raw("answer")
        if raw is None and self.chat is not None:
            return self.chat.answer
        return raw

    def meta(self) -> dict[str, Any]:
        out = _meta(self)
        if self.chat is not None and self.chat.system:
            out.setdefault("system", self.chat.system)
        return out


def _options(row: _Row) -> tuple[list[str], str, str]:
    """(options, question, text after the options): from the options column(s), else lettered lines
    inside the prompt (then the question is the text before them)."""
    col, prompt, after = row.column("options"), row.prompt(), ""
    if "," in col:
        missing = [c.strip() for c in col.split(",") if c.strip() not in row.rec]
        if missing:
            raise RecordError(f"missing column {missing[0]!r} (field options)")
        values: Any = [row.rec.get(c.strip()) for c in col.split(",")]
    else:
        values = chat.options_value(row.raw("options"), col)
    if values is None:
        found = chat.split_lettered_options(prompt)
        if found is None:
            raise RecordError(f"no options: no column {col!r} (field options; also looked for choices) and "
                              "no lettered lines (A. …, (A) …, A: …) in the prompt")
        prompt, values, after = found
    if len(values) < 2:
        raise RecordError(f"column {col!r} (field options) must hold at least 2 options")
    options = [optional_text(v) for v in values]
    if None in options:
        raise RecordError(f"column {col!r} (field options): option {LETTERS[options.index(None)]} is empty")
    return options, prompt, after  # type: ignore[return-value]


def _letter(row: _Row, options: list[str]) -> str:
    raw = row.answer()
    if raw is None or raw == []:
        row.need("answer")
    return chat.answer_letter(raw, options, row.column("answer"))


def _answer_text(row: _Row) -> str:
    """A free-text answer: the answer column (first entry of a list), else a chat's final assistant turn."""
    raw = row.answer()
    if isinstance(raw, (list, tuple)):
        raw = raw[0] if raw else None
    value = optional_text(raw)
    return row.need("answer") if value is None else value


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
    family, prompt, rationale = cfg.family, row.prompt(), row.get("rationale")
    common = {"key": row.get("id"), "rationale": rationale, "meta": row.meta()}
    if family == "mcqa":
        options, question, after = _options(row)
        letter = _letter(row, options)
        if after:
            common["meta"]["prompt_after_options"] = after
        return Draft(prompt=mcqa_prompt(question, options, row.get("context")), answer=letter,
                     reference=row.get("reference") or reference(letter, rationale), options=options,
                     **common)
    if family == "math":
        answer = _answer_text(row)
        return Draft(prompt=math_prompt(prompt), answer=answer,
                     reference=row.get("reference") or reference(answer, rationale), **common)
    if family == "code":
        gold, tests = row.need("reference"), _tests(row, family)
        m = re.search(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", gold, re.MULTILINE)
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
    answer = row.get("reference") if row.answer() is None else _answer_text(row)
    if answer is None:
        row.need("answer")
    return Draft(prompt=prompt, answer=answer, reference=row.get("reference") or reference(answer, rationale),
                 **common)

"""Tool-use adapter for ToolAlpaca as published on the hub (`Ahren09/ToolAlpaca`, train and test).

Assumed record schema (the one the reference code reads):

- ``prompt``: the full ReAct prompt with the API documentation, ending in "Begin!" - the student prompt;
- ``instruction``: the user request alone;
- ``name``: the API name (optional);
- ``golden_response``: list of strings forming the gold ReAct text ("Thought: ...", "Action: X",
  "Action Input: {...}"); the test split holds ``[""]``;
- ``golden_answer``: on the test split, a list of ``{"Action": ..., "Action_Input": ...}`` steps
  (Action_Input a JSON string or object); on the train split it may hold the final answer as strings,
  kept in ``meta.final_answer``.

The reference is the gold ReAct text (rebuilt from the steps when ``golden_response`` is empty),
``tests`` is the JSON list of gold steps ``[{"action": ..., "action_input": {...}}]`` that the scorer
compares against, and ``answer`` is the JSON list of gold action names in order.
"""

from __future__ import annotations

import json
import re
from typing import Any

from stages.ingest.config import IngestConfig
from stages.ingest.formats import Draft, RecordError, dumps, need, optional_text, text

_STEP = re.compile(
    r"Action\s*\d*\s*:\s*(.*?)\nAction\s*\d*\s*Input\s*\d*\s*:\s*(.*?)"
    r"(?=\n\s*(?:Thought|Action\s*\d*\s*:|Observation|Final Answer)|\Z)",
    re.S,
)


def _json_or_text(value: Any) -> Any:
    """Action inputs are JSON objects when they parse, else the raw string."""
    if value is None:
        return {}
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value.strip())
    except json.JSONDecodeError:
        return value.strip()


def parse_steps(react: str) -> list[dict[str, Any]]:
    """Gold ``{action, action_input}`` steps of a ReAct text, in order."""
    return [{"action": a.strip(), "action_input": _json_or_text(i.strip())} for a, i in _STEP.findall(react)]


def _steps_from_answer(golden_answer: Any) -> list[dict[str, Any]]:
    if not isinstance(golden_answer, list):
        return []
    steps = []
    for step in golden_answer:
        if isinstance(step, dict) and step.get("Action"):
            steps.append({"action": str(step["Action"]).strip(),
                          "action_input": _json_or_text(step.get("Action_Input"))})
    return steps


def _react(steps: list[dict[str, Any]]) -> str:
    def show(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

    return "\n".join(f"Action: {s['action']}\nAction Input: {show(s['action_input'])}" for s in steps)


def tooluse(rec: dict[str, Any], cfg: IngestConfig) -> Draft:
    """A ToolAlpaca record -> tool example (see the module docstring for the schema)."""
    prompt = text(need(rec, "prompt"), "prompt")
    golden = rec.get("golden_response")
    lines = golden if isinstance(golden, list) else [golden]
    react = optional_text("\n".join(str(x) for x in lines if x is not None))
    steps = _steps_from_answer(rec.get("golden_answer")) or (parse_steps(react) if react else [])
    if not steps:
        raise RecordError("no gold steps: 'golden_response' and 'golden_answer' hold no Action")
    answers = rec.get("golden_answer")
    final = [str(a) for a in answers if isinstance(a, str) and a.strip()] if isinstance(answers, list) else []
    meta = {"instruction": optional_text(rec.get("instruction")), "api": optional_text(rec.get("name")),
            "final_answer": "\n".join(final) or None}
    return Draft(prompt=prompt, reference=react or _react(steps), answer=dumps([s["action"] for s in steps]),
                 tests=dumps(steps), meta={k: v for k, v in meta.items() if v})

"""Negatives: verification per family (code in the real sandbox), rule-based and WordNet sources, parsers."""

from __future__ import annotations

import ast
import json
import random

import pytest

from engines.sandbox import SandboxLimits
from stages.induction.llm import parse_json_object, string_field
from stages.ingest.formats import mcqa_prompt, reference
from stages.negatives.answers import negate_claim, replace_number, target_letters, wrong_numbers
from stages.negatives.corrupt import corrupt_candidates, corrupt_code
from stages.negatives.lexical import wordnet_candidates
from stages.negatives.llm import Target, build_prompt, parse_reply, targets
from stages.negatives.verify import verify_negatives

OPTIONS = ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"]
RATIONALE = "Plants absorb carbon dioxide for photosynthesis. It is converted into sugars using light energy."
CODE = "def is_big(x):\n    if x > 10:\n        return True\n    return False\n"


def mcqa(i: str = "1") -> dict:
    return {"id": f"m/{i}", "family": "mcqa", "prompt": mcqa_prompt("Which gas do plants absorb?", OPTIONS),
            "reference": reference("B", RATIONALE), "rationale": RATIONALE, "options": OPTIONS, "answer": "B"}


def math() -> dict:
    r = "Tom starts with 3 apples.\nHe buys 4 more, so 3 + 4 = 7."
    return {"id": "g/1", "family": "math", "prompt": "Tom has 3 apples and buys 4 more. How many?",
            "reference": reference("7", r), "rationale": r, "answer": "7"}


def code() -> dict:
    return {"id": "c/1", "family": "code", "prompt": "Write is_big(x): True when x > 10.", "reference": CODE,
            "answer": "is_big", "tests": "assert is_big(11)\nassert not is_big(10)\nassert not is_big(3)\n",
            "meta": json.dumps({"entry_point": "is_big"})}


def tool() -> dict:
    steps = [{"action": "getCurrentWeather", "action_input": {"city": "Paris", "units": "metric"}}]
    return {"id": "t/1", "family": "tool", "answer": '["getCurrentWeather"]', "tests": json.dumps(steps),
            "prompt": "Action: the action to take, should be one of [getCurrentWeather, getForecast]\nQ: Paris?",
            "reference": "Thought: I need the current weather for the city.\nAction: getCurrentWeather\n"
                         'Action Input: {"city": "Paris", "units": "metric"}'}


LIMITS = SandboxLimits(timeout_s=3, cpu_s=2)


def verdicts(pairs):
    return [(v.wrong_answer, v.verified_wrong) for v in verify_negatives(pairs, LIMITS, workers=2)]


def test_verification_per_family_with_the_real_sandbox():
    cases = [
        (mcqa(), "Reasoning: Oxygen is what plants need.\nAnswer: A"),
        (mcqa(), "Reasoning: It is carbon dioxide.\nAnswer: B"),
        (mcqa(), "I am not sure."),
        (math(), "Reasoning: 3 + 4 = 8\nAnswer: 8"),
        (math(), "Answer: 7.0"),
        (math(), "no idea"),
        (code(), CODE.replace(">", ">=")),
        (code(), CODE),
        (code(), "def is_big(x):\n    while True:\n        pass\n"),
        (tool(), 'Action: getForecast\nAction Input: {"city": "Paris"}'),
        (tool(), 'Action: getCurrentWeather\nAction Input: {"city": "Paris", "units": "metric"}'),
        (tool(), "I would check the weather."),
        ({"id": "f/1", "family": "free", "answer": "blue whale"}, "Answer: the blue whale"),
        ({"id": "f/1", "family": "free", "answer": "blue whale"}, "Answer: an elephant"),
    ]
    assert verdicts(cases) == [
        ("A", True), ("B", False), (None, None),
        ("8", True), ("7", False), (None, None),
        (None, True), (None, False), (None, True),  # wrong code fails a test; an endless loop times out
        ('["getForecast"]', True), ('["getCurrentWeather"]', False), (None, None),
        ("the blue whale", False), ("an elephant", None),
    ]


def test_mcqa_targets_cover_every_distractor_from_an_item_offset():
    for i in range(6):
        letters = target_letters(mcqa(str(i)), 3, seed=0)
        assert sorted(letters) == ["A", "C", "D"]
    firsts = {target_letters(mcqa(str(i)), 1, seed=0)[0] for i in range(30)}
    assert firsts == {"A", "C", "D"}  # no distractor is favoured across items
    assert target_letters({**mcqa(), "options": ["x"], "answer": "A"}, 2, 0) == []


def test_wrong_numbers_are_distinct_nearby_and_seeded():
    got = wrong_numbers("7", 4, random.Random(0))
    assert len(set(got)) == 4 and "7" not in got and set(got[:2]) == {"6", "8"}
    assert got == wrong_numbers("7", 4, random.Random(0))
    assert "3/4" not in wrong_numbers("3/4", 3, random.Random(1))
    assert replace_number("so 3 + 4 = 7 and 17 or 7.5", "7", "8") == "so 3 + 4 = 8 and 17 or 7.5"


def test_corrupt_mcqa_and_math_keep_the_reference_layout():
    for ex in (mcqa(), math()):
        out = corrupt_candidates(ex, 3, seed=0)
        assert len(out) == 3 and len({t for _, _, t in out}) == 3
        for _, _, text in out:
            assert text.startswith("Reasoning: ") and "\nAnswer: " in text and text != ex["reference"]
            assert text.rsplit("Answer: ", 1)[1] != ex["answer"]
        assert out == corrupt_candidates(ex, 3, seed=0)
    assert {s for _, s, _ in corrupt_candidates(mcqa(), 3, 0)} == {"swap_letter", "negate_claim", "drop_step"}


def test_negate_claim_flips_one_claim():
    assert negate_claim("It is converted into sugar.", random.Random(0)) == "It is not converted into sugar."
    assert negate_claim("Water cannot burn.", random.Random(0)) == "Water can burn."
    assert negate_claim("Water burns.", random.Random(0)) is None


@pytest.mark.parametrize("strategy", ["flip_comparison", "off_by_one", "return_constant"])
def test_code_corruptions_parse_and_change_the_function(strategy):
    out = corrupt_code(CODE, strategy, random.Random(0))
    assert out is not None and out != CODE and "def is_big(x):" in out
    ast.parse(out)


def test_code_corruption_skips_docstrings_and_reports_no_site():
    src = 'def f(x):\n    """Return 1."""\n    return x\n'
    assert corrupt_code(src, "flip_comparison", random.Random(0)) is None
    assert corrupt_code(src, "off_by_one", random.Random(0)) is None
    assert corrupt_code("def broken(:", "off_by_one", random.Random(0)) is None


def test_tool_corruptions_change_action_or_arguments():
    texts = [t for _, _, t in corrupt_candidates(tool(), 3, seed=0)]
    assert len(texts) == 3
    assert any("Action: getForecast" in t for t in texts)
    assert all(t.startswith("Thought: I need the current weather") for t in texts)


def test_wordnet_source_perturbs_reasoning_and_ends_wrong():
    out = wordnet_candidates(mcqa(), 2, seed=0, kinds=("antonym", "hypernym"), max_swaps=2)
    assert len(out) == 2
    for slot, kind, text in out:
        assert kind.startswith("wordnet_") and text.startswith("Reasoning: ")
        reasoning = text.split("\n")[0][len("Reasoning: "):]
        assert reasoning != RATIONALE and "carbon dioxide" in reasoning.lower()  # option words protected
        assert text.rsplit("Answer: ", 1)[1] in {"A", "C", "D"}
    maths = wordnet_candidates(math(), 1, seed=0, kinds=("antonym",), max_swaps=1)
    assert maths and "buys" not in maths[0][2] and maths[0][2].rsplit("Answer: ", 1)[1] != "7"
    assert wordnet_candidates(code(), 2, seed=0, kinds=("synonym",), max_swaps=1) == []
    assert wordnet_candidates({**mcqa(), "rationale": None, "reference": "Answer: B"}, 1, 0, ("synonym",), 1) == []


# --- LLM prompts and replies -------------------------------------------------------------------------

def test_llm_targets_and_prompts():
    t = targets(mcqa(), 2, seed=0)
    assert [x.slot for x in t] == [0, 1] and all(x.goal in "ACD" for x in t)
    prompt = build_prompt(mcqa(), Target(0, "C"))
    assert "correct option is C (Nitrogen)" in prompt and '"answer": "C"' in prompt
    assert "fails some tests" in build_prompt(code(), targets(code(), 1, 0)[0])
    assert "should be one of" in build_prompt(tool(), targets(tool(), 1, 0)[0])


@pytest.mark.parametrize(("example", "reply", "expected"), [
    (mcqa(), '{"reasoning": "Nitrogen makes up most of the air plants take in.", "answer": "C"}',
     "Reasoning: Nitrogen makes up most of the air plants take in.\nAnswer: C"),
    (mcqa(), "```json\n{'reasoning': 'Helium is light and plants love it.', 'answer': '(D)',}\n```",
     "Reasoning: Helium is light and plants love it.\nAnswer: D"),
    (mcqa(), "Oxygen is clearly what leaves take in every day.\nAnswer: A",
     "Reasoning: Oxygen is clearly what leaves take in every day.\nAnswer: A"),
    (mcqa(), '{"reasoning": "Because', None),
    (math(), '{"reasoning": "Tom has 3 and gets 5 more, 3 + 5 = 8.", "answer": "8 apples"}',
     "Reasoning: Tom has 3 and gets 5 more, 3 + 5 = 8.\nAnswer: 8"),
    (code(), json.dumps({"reasoning": "flip", "code": CODE.replace(">", "<")}), CODE.replace(">", "<")),
    (code(), "Here:\n```python\n" + CODE.replace("10", "11") + "```", CODE.replace("10", "11")),
    (code(), '{"code": "print(1)"}', None),
    (tool(), '{"thought": "Forecast is enough.", "action": "getForecast", "action_input": {"city": "Paris"}}',
     'Thought: Forecast is enough.\nAction: getForecast\nAction Input: {"city": "Paris"}'),
    (tool(), 'Action: getForecast\nAction Input: {"city": "Oslo"}', 'Action: getForecast\nAction Input: {"city": "Oslo"}'),
])
def test_parse_reply_per_family(example, reply, expected):
    assert parse_reply(example, reply) == expected


def test_json_recovery():
    assert parse_json_object('text {"a": {"b": "}"}, "c": 1} tail') == {"a": {"b": "}"}, "c": 1}
    assert parse_json_object("\u201cnot json\u201d") is None
    assert parse_json_object('{"a": "x", "b": [1, 2,],}') == {"a": "x", "b": [1, 2]}
    assert string_field('{"reasoning": "cut \\"quoted\\" off', "reasoning") == 'cut "quoted" off'

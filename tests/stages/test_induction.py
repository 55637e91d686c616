"""Induction stage: seeded train-only demonstrations, leakage validator, regeneration, parsing."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pytest

import schemas
from engines.generation import Completion, HFGenerator, PromptStats, SamplingConfig
from stages import induction
from stages.induction import DemoSampler, GeneratorConfig, InductionConfig, InductionError
from stages.induction.prompts import meta_prompt, parse_instruction
from stages.induction.validate import check_instruction
from stages.ingest.formats import mcqa_prompt, reference
from storage import Workspace, artifact_key

GOOD = ("Read the question carefully and identify the concept it tests. Rule out the options that "
        "contradict basic facts, then compare the remaining ones against the question. Give a short "
        "justification and finish with the final answer line in the requested format.")


def mcqa(i: int, split: str = "train") -> dict:
    options = [f"first choice {i}", f"photosynthesis variant {i}", "nitrogen", "helium"]
    return {"id": f"q/{i:02d}", "dataset": "q", "split": split, "family": "mcqa",
            "prompt": mcqa_prompt(f"Question number {i} about plants?", options),
            "reference": reference("B", f"Plants need light for step {i}."), "rationale": f"Plants need light {i}.",
            "options": options, "answer": "B"}


def examples(n_train: int = 6, n_test: int = 2) -> pa.Table:
    rows = [mcqa(i) for i in range(n_train)] + [mcqa(100 + i, "test") for i in range(n_test)]
    return schemas.conform(rows, schemas.EXAMPLES)


@dataclass
class Replay:
    """A Generator that answers from hand-written replies, in order (the model's side of a recording)."""

    replies: list[str]
    prompts: list[list[str]] = field(default_factory=list)
    stats: PromptStats = field(default_factory=PromptStats)

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        self.prompts.append(list(prompts))
        out = [self.replies.pop(0) for _ in prompts]
        return [Completion(t, [], 0, True, 0.0) for t in out]


# --- validator ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("Think first.", "too_short"),
    ("casting rubble deper purportedoplan effectiveBO Tomb Perth stanza Physicians ultrasonic", "not_prose"),
    (GOOD + " Study the reference solution before answering.", "mentions_reference"),
    (GOOD + " As in the examples above, be brief.", "mentions_reference"),
    (GOOD + " For instance, the answer is B.", "leaks_letter"),
    (GOOD + " Option (C) is usually a trap.", "leaks_letter"),
    (GOOD + " Remember that photosynthesis variant 3 is a common choice.", "leaks_answer"),
    (GOOD + " ```python\nx = 1\n```", "contains_code"),
    (GOOD + " Think of question number 3 about plants first.", "copies_demo"),
])
def test_validator_rejects_each_leak(text, reason):
    assert check_instruction(text, [mcqa(3)]) == reason


def test_validator_accepts_a_general_instruction_and_checks_numbers_and_code():
    assert check_instruction(GOOD, [mcqa(3)]) is None
    template = GOOD + " Reason briefly, then give the final answer on the last line."
    assert check_instruction(template, [mcqa(3), mcqa(4)]) is None  # the shared prompt template may be echoed
    assert check_instruction(template, [mcqa(3)]) == "copies_demo"  # one demo: template and specifics look alike
    assert check_instruction('End with "Answer: <letter>" on its own line. ' + GOOD, [mcqa(3)]) is None
    math = {"id": "m/1", "family": "math", "answer": "1250", "reference": "Answer: 1250"}
    assert check_instruction(GOOD + " The total is often 1,250 here.", [math]) == "leaks_number"
    assert check_instruction(GOOD + " Use 2 or 3 steps.", [math]) is None
    code = {"id": "c/1", "family": "code", "answer": "sum_evens",
            "reference": "def sum_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)\n"}
    leak = GOOD + " Then write return sum(x for x in xs if x % 2 == 0) for the body."
    assert check_instruction(leak, [code]) == "contains_code"
    assert check_instruction(GOOD + " Name it sum_evens.", [code]) == "leaks_answer"


# --- parsing -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply", [
    json.dumps({"instruction": GOOD}),
    f"Sure! Here it is:\n```json\n{json.dumps({'instruction': GOOD})}\n```",
    "{'instruction': '" + GOOD + "',}",
    f"Instruction: {GOOD}",
    '{"instruction": "' + GOOD,  # cut off by the token limit
    GOOD,
])
def test_parse_instruction_variants(reply):
    assert parse_instruction(reply) == GOOD


def test_parse_instruction_gives_none_for_json_without_it():
    assert parse_instruction('{"rationale": "x"}') is None


def test_meta_prompt_shows_demos_without_leaking_instructions_to_copy():
    prompt, clipped = meta_prompt("mcqa", [mcqa(1), mcqa(2)], max_demo_chars=60)
    assert prompt.count("### Example") == 2 and clipped == 2  # both prompts shortened, visibly
    assert prompt.endswith("Instruction:") and "reference or example solution" in prompt


# --- sampling ----------------------------------------------------------------------------------------

def test_demo_sampler_is_seeded_and_disjoint_until_exhausted():
    items = [{"id": str(i)} for i in range(9)]
    a = DemoSampler(items, 3, random.Random("s"))
    draws = [[d["id"] for d in a.draw()] for _ in range(3)]
    assert sorted(i for d in draws for i in d) == sorted(str(i) for i in range(9))
    b = DemoSampler(items, 3, random.Random("s"))
    assert draws == [[d["id"] for d in b.draw()] for _ in range(3)]
    assert all(len({d["id"] for d in a.draw()}) == 3 for _ in range(5))  # distinct within a draw


# --- stage -------------------------------------------------------------------------------------------

def test_run_regenerates_rejected_slots_and_uses_train_demos_only(tmp_path):
    replies = [json.dumps({"instruction": GOOD + " The answer is B."}),  # slot 0: leaks, regenerated
               json.dumps({"instruction": "Work through the problem step by step and state the result."
                                          " Keep the reasoning short and clear for the reader."}),
               f"Instruction: {GOOD}"]
    gen = Replay(replies)
    cfg = InductionConfig(num_instructions=2, num_demos=2, max_attempts=3, backoff_s=0)
    ws = Workspace.create(tmp_path / "ws")
    out = induction.run(cfg, examples(), gen, ws)["instructions"]
    schemas.validate(out, schemas.INSTRUCTIONS)
    rows = out.to_pylist()
    assert [r["instruction_id"] for r in rows] == [0, 1] and rows[0]["text"] == GOOD
    assert {r["model"] for r in rows} == {"SmolLM2-135M-Instruct"}
    assert all(len(r["demo_ids"]) == 2 and all(not i.startswith("q/1") for i in r["demo_ids"]) for r in rows)
    assert [len(p) for p in gen.prompts] == [2, 1]
    assert gen.prompts[0][0] != gen.prompts[1][0]  # regenerated with other demonstrations
    assert all("Question number 10" not in p for call in gen.prompts for p in call)  # no test items shown
    stats = json.loads((ws.files / "induction_stats.json").read_text())["datasets"]["q"]
    assert stats["rejected"] == {"leaks_letter": 1} and stats["accepted"] == 2


def test_run_with_the_tiny_model_counts_every_reply(tiny_lm, tmp_path):
    model, tok = tiny_lm
    gen = HFGenerator(model, tok, batch_size=4)
    cfg = InductionConfig(num_instructions=2, num_demos=2, max_attempts=2, min_instructions=0, max_demo_chars=120,
                          generator=GeneratorConfig(max_new_tokens=8, temperature=1.0))
    ws = Workspace.create(tmp_path / "ws")
    out = induction.run(cfg, examples(), gen, ws)["instructions"]
    again = induction.run(cfg, examples(), HFGenerator(model, tok, batch_size=4))["instructions"]
    assert out.equals(again)  # seeded end to end
    schemas.validate(out, schemas.INSTRUCTIONS)
    stats = json.loads((ws.files / "induction_stats.json").read_text())["datasets"]["q"]
    assert stats["accepted"] == out.num_rows and stats["accepted"] + stats["unfilled_slots"] == 2
    assert stats["rejected_total"] >= 2 * stats["unfilled_slots"]  # an unfilled slot failed every round
    with pytest.raises(InductionError, match="passed validation"):
        induction.run(InductionConfig(num_instructions=1, num_demos=1, max_attempts=1, max_demo_chars=100,
                                      generator=GeneratorConfig(max_new_tokens=4)), examples(), gen)


def test_errors_and_cache_key():
    with pytest.raises(InductionError, match="no train-split"):
        induction.run(InductionConfig(), examples(0, 2), Replay([]))
    with pytest.raises(ValueError, match="test split"):
        InductionConfig(split="test")
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        GeneratorConfig(backend="openai", base_url="http://127.0.0.1:1/v1", api_key_env="sk-abc123!")
    with pytest.raises(ValueError, match="base_url"):
        GeneratorConfig(backend="openai")
    key = artifact_key(induction.SPEC, InductionConfig(), {"examples": "b" * 64})
    assert key != artifact_key(induction.SPEC, InductionConfig(seed=1), {"examples": "b" * 64})

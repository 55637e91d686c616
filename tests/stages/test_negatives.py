"""Negatives stage end to end: train split only, schema, sources, LLM regeneration, resume after a crash."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pytest

import schemas
from engines.generation import Completion, HFGenerator, PromptStats, SamplingConfig
from stages import negatives
from stages.induction.llm import GeneratorConfig, generate_with_backoff
from stages.ingest.formats import mcqa_prompt, reference
from stages.negatives import CorruptSource, LLMSource, NegativesConfig, WordNetSource
from storage import Workspace, artifact_key

OPTIONS = ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"]


def mcqa(i: int, split: str = "train") -> dict:
    r = f"Plants absorb carbon dioxide in experiment {i}. It is converted into sugars using light energy."
    return {"id": f"m/{i:02d}", "dataset": "m", "split": split, "family": "mcqa",
            "prompt": mcqa_prompt(f"Which gas do plants absorb (case {i})?", OPTIONS),
            "reference": reference("B", r), "rationale": r, "options": OPTIONS, "answer": "B"}


def examples(n_train: int = 4, n_test: int = 2) -> pa.Table:
    rows = [mcqa(i) for i in range(n_train)] + [mcqa(50 + i, "test") for i in range(n_test)]
    return schemas.conform(rows, schemas.EXAMPLES)


@dataclass
class Replay:
    """A Generator replaying hand-written replies; ``fail_on`` calls raise like a dead endpoint."""

    reply: Callable[[str], str]
    fail_on: set[int] = field(default_factory=set)
    calls: int = 0
    prompts: int = 0
    stats: PromptStats = field(default_factory=PromptStats)

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        self.calls += 1
        if self.calls in self.fail_on:
            raise ConnectionError("endpoint unreachable")
        self.prompts += len(prompts)
        return [Completion(self.reply(p), [], 0, True, 0.0) for p in prompts]


def arguing(prompt: str) -> str:
    """What a cooperative model answers: argue for the requested letter."""
    letter = prompt.split("correct option is ", 1)[1][0]
    return json.dumps({"reasoning": f"Plants clearly prefer option {letter} for their metabolism.", "answer": letter})


def only(source: str, n: int = 2, **kw) -> NegativesConfig:
    counts = {"llm": 0, "wordnet": 0, "corrupt": 0, source: n}
    return NegativesConfig(llm=LLMSource(num_per_item=counts["llm"], backoff_s=0, **kw),
                           wordnet=WordNetSource(num_per_item=counts["wordnet"]),
                           corrupt=CorruptSource(num_per_item=counts["corrupt"]), chunk_size=2)


def test_all_sources_on_train_items_only(tmp_path):
    cfg = NegativesConfig(llm=LLMSource(num_per_item=2, backoff_s=0), chunk_size=3)
    ws = Workspace.create(tmp_path / "ws")
    out = negatives.run(cfg, examples(), Replay(arguing), ws)["negatives"]
    schemas.validate(out, schemas.NEGATIVES)
    rows = out.to_pylist()
    assert {r["id"] for r in rows} == {f"m/{i:02d}" for i in range(4)}  # no test item gets negatives
    by_item: dict[str, list[dict]] = {}
    for r in rows:
        by_item.setdefault(r["id"], []).append(r)
    for items in by_item.values():
        assert [r["neg_id"] for r in items] == list(range(len(items)))
        assert Counter(r["source"] for r in items) == {"llm": 2, "wordnet": 1, "corrupt": 2}
        assert len({r["text"] for r in items}) == len(items)
        assert all(r["verified_wrong"] is True and r["wrong_answer"] in "ACD" for r in items)
    stats = json.loads((ws.files / "negatives_stats.json").read_text())
    assert stats["kept"] == {"llm": 8, "wordnet": 4, "corrupt": 8}


def test_llm_negatives_that_turn_out_correct_are_kept_and_flagged():
    out = negatives.run(only("llm", 1), examples(2, 0), Replay(lambda p: '{"reasoning": "It is carbon '
                                                                        'dioxide, of course.", "answer": "B"}'))
    rows = out["negatives"].to_pylist()
    assert len(rows) == 2 and all(r["verified_wrong"] is False and r["wrong_answer"] == "B" for r in rows)


def test_unparsable_replies_are_regenerated_then_counted(tmp_path):
    replies = iter(["garbage", "more garbage"] + [arguing(f"correct option is {x}") for x in "AC"])
    gen = Replay(lambda p: next(replies) if "case 0" in p else "???")
    ws = Workspace.create(tmp_path / "ws")
    out = negatives.run(only("llm", 2, max_attempts=2), examples(2, 0), gen, ws)["negatives"]
    assert out.column("id").to_pylist() == ["m/00", "m/00"]
    llm = json.loads((ws.files / "negatives_stats.json").read_text())["sources"]["llm"]
    assert llm["requested"] == 4 and llm["unfilled"] == 2 and llm["parse_failed"] == 2 + 4


def test_killed_run_resumes_without_regenerating_done_chunks(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    cfg = only("llm", 1, retries=1)
    data = examples(6, 1)  # 6 train items, chunks of 2 -> 3 chunks
    crashing = Replay(arguing, fail_on={2, 3})  # chunk 1's call and its one retry fail
    with pytest.raises(ConnectionError):
        negatives.run(cfg, data, crashing, ws)
    assert [t.num_rows for t in ws.load_progress("llm-*")] == [2]
    resumed = Replay(arguing)
    out = negatives.run(cfg, data, resumed, ws)["negatives"]
    assert resumed.prompts == 4  # chunks 1 and 2 only; chunk 0 came from the saved progress
    fresh = negatives.run(cfg, data, Replay(arguing))["negatives"]
    assert out.equals(fresh)


def test_transient_errors_are_retried_with_backoff():
    waits: list[float] = []
    gen = Replay(arguing, fail_on={1, 2})
    out = generate_with_backoff(gen, ["correct option is A"], SamplingConfig(), retries=3, backoff_s=0.5,
                                sleep=waits.append)
    assert len(out) == 1 and waits == [0.5, 1.0]


def test_tiny_model_replies_go_through_the_robust_path(tiny_lm, tmp_path):
    model, tok = tiny_lm
    cfg = NegativesConfig(llm=LLMSource(num_per_item=1, max_attempts=2, backoff_s=0,
                                        generator=GeneratorConfig(max_new_tokens=6, temperature=1.0)),
                          wordnet=WordNetSource(num_per_item=0), corrupt=CorruptSource(num_per_item=1))
    ws = Workspace.create(tmp_path / "ws")
    out = negatives.run(cfg, examples(2, 1), HFGenerator(model, tok, batch_size=2), ws)["negatives"]
    schemas.validate(out, schemas.NEGATIVES)
    llm = json.loads((ws.files / "negatives_stats.json").read_text())["sources"]["llm"]
    kept = Counter(out.column("source").to_pylist())
    assert kept["corrupt"] == 2 and llm["requested"] == 2
    assert kept["llm"] + llm["unfilled"] == 2 and llm["parse_failed"] >= 2 * llm["unfilled"]


def test_config_validation_and_cache_key():
    with pytest.raises(ValueError, match="num_per_item"):
        NegativesConfig(corrupt=CorruptSource(num_per_item=-1))
    with pytest.raises(ValueError, match="kind"):
        NegativesConfig(wordnet=WordNetSource(kinds=("meronym",)))  # type: ignore[arg-type]
    spec = negatives.SPEC
    key = artifact_key(spec, NegativesConfig(), {"examples": "c" * 64})
    assert key != artifact_key(spec, NegativesConfig(seed=1), {"examples": "c" * 64})
    assert key != artifact_key(spec, NegativesConfig(llm=LLMSource(num_per_item=3)), {"examples": "c" * 64})

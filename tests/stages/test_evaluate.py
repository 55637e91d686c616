"""Evaluate stage on real generations from the tiny model: schemas, resume without duplicates, aggregation."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

import schemas
from engines.generation import Completion, HFGenerator, SamplingConfig
from stages.evaluate import EvaluateConfig, aggregate, run
from storage import Workspace


def _examples() -> pa.Table:
    rows = []
    for i in range(5):
        rows.append(dict(id=f"mc/{i}", dataset="mc", split="test", family="mcqa", prompt=f"Question {i}? A or B",
                         reference="Answer: A", rationale=None, options=["yes", "no"], answer="A", tests=None,
                         meta="{}"))
    rows.append(dict(id="mc/train", dataset="mc", split="train", family="mcqa", prompt="q", reference="Answer: A",
                     rationale=None, options=["a", "b"], answer="A", tests=None, meta="{}"))
    rows.append(dict(id="code/0", dataset="code", split="test", family="code", prompt="Write f returning 1",
                     reference="def f():\n    return 1", rationale=None, options=None, answer="f",
                     tests="assert f() == 1\n", meta="{}"))
    return schemas.conform(rows, schemas.EXAMPLES)


class FixedGenerator:
    """A real Generator implementation with scripted outputs, to pin the scorer wiring exactly."""

    def __init__(self, texts: dict[str, str]):
        from engines.generation import PromptStats

        self.texts, self.stats, self.calls = texts, PromptStats(), 0

    def generate(self, prompts, sampling, progress=None):
        self.calls += 1
        out = [Completion(self.texts.get(p, "Hmm."), [1, 2], 7, True, 0.01) for p in prompts]
        if progress:
            progress(len(prompts))
        return out


def test_scores_follow_the_completions(tmp_path):
    gen = FixedGenerator({"Question 0? A or B": "Reasoning.\nAnswer: A", "Question 1? A or B": "Answer: B",
                          "Write f returning 1": "```python\ndef f():\n    return 1\n```"})
    out = run(EvaluateConfig(), _examples(), gen, Workspace.create(tmp_path / "ws"), "m", "base")
    preds = {r["id"]: r for r in out["predictions"].to_pylist()}
    assert set(preds) == {"mc/0", "mc/1", "mc/2", "mc/3", "mc/4", "code/0"}  # train split not evaluated
    assert preds["mc/0"]["correct"] and not preds["mc/1"]["correct"] and preds["mc/2"]["extracted"] is None
    assert preds["code/0"]["correct"] and json.loads(preds["code/0"]["detail"])
    scores = {(r["dataset"], r["metric"]): r for r in out["scores"].to_pylist()}
    assert scores[("mc", "accuracy")]["value"] == pytest.approx(1 / 5) and scores[("mc", "accuracy")]["n"] == 5
    assert scores[("code", "pass@1")]["value"] == 1.0
    assert scores[("mc", "extracted_rate")]["value"] == pytest.approx(2 / 5)


def test_resume_after_interruption_has_no_duplicates(tmp_path, tiny_lm):
    model, tok = tiny_lm
    cfg = EvaluateConfig(chunk_size=2, batch_size=2, max_new_tokens={"mcqa": 4, "code": 4})
    ws = Workspace.create(tmp_path / "ws")

    class Dies(HFGenerator):
        calls = 0

        def generate(self, prompts, sampling, progress=None):
            Dies.calls += 1
            if Dies.calls == 3:
                raise KeyboardInterrupt
            return super().generate(prompts, sampling, progress)

    with pytest.raises(KeyboardInterrupt):
        run(cfg, _examples(), Dies(model, tok, batch_size=2), ws, "tiny", "base")
    done = sum(t.num_rows for t in ws.load_progress())
    assert 0 < done < 6  # some chunks finished before the interruption, not all
    fresh = HFGenerator(model, tok, batch_size=2)
    out = run(cfg, _examples(), fresh, ws, "tiny", "base")
    ids = out["predictions"].column("id").to_pylist()
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6
    full = run(cfg, _examples(), HFGenerator(model, tok, batch_size=2), Workspace.create(tmp_path / "ws2"),
               "tiny", "base")
    assert out["predictions"].column("completion").to_pylist() == full["predictions"].column("completion").to_pylist()


def test_config_rejects_incoherent_values():
    with pytest.raises(ValueError, match="num_samples > 1 needs temperature"):
        EvaluateConfig(num_samples=2)
    with pytest.raises(ValueError, match="unknown family 'audio'"):
        EvaluateConfig(max_new_tokens={"audio": 3})
    assert EvaluateConfig(early_stop=False).sampling("code") == SamplingConfig(max_new_tokens=384)
    assert EvaluateConfig().sampling("code").stop is not None


def test_aggregate_standard_error():
    preds = schemas.conform([dict(id=str(i), dataset="d", model="m", method="x", sample=0, prompt_tokens=3,
                                  completion="", extracted="A", correct=i < 3, score=float(i < 3), latency=0.0,
                                  truncated=False, detail="{}") for i in range(4)], schemas.PREDICTIONS)
    rows = [dict(id=str(i), family="mcqa") for i in range(4)]
    s = {r["metric"]: r for r in aggregate(preds, rows, "m", "x", EvaluateConfig()).to_pylist()}
    assert s["accuracy"]["value"] == 0.75 and s["accuracy"]["stderr"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5)

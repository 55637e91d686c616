"""Evaluate stage on real generations from the tiny model: schemas, resume without duplicates, aggregation."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict

import pyarrow as pa
import pytest

import schemas
from engines.generation import Completion, HFGenerator, SamplingConfig
from stages.evaluate import ENGINE_FIELDS, EvaluateConfig, aggregate, run
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


def test_remote_engines_need_their_settings():
    with pytest.raises(ValueError, match="base_url: engine=openai needs the server's URL"):
        EvaluateConfig(engine="openai", served_model="m")
    with pytest.raises(ValueError, match="served_model: engine=openai needs the model id"):
        EvaluateConfig(engine="openai", base_url="http://127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="vllm_max_lora_rank must be one of 8, 16"):
        EvaluateConfig(engine="vllm", vllm_max_lora_rank=48)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_engine_vllm_without_vllm_is_one_line_at_config_load():
    from unisd.config import ConfigError, load_experiment

    with pytest.raises(ValueError, match=r"^evaluate.engine=vllm needs the vllm package: pip install vllm"):
        EvaluateConfig(engine="vllm")
    with pytest.raises(ConfigError, match="pip install vllm") as e:
        load_experiment("smoke", overrides=["evaluate.engine=vllm"], check_model=False)
    assert "\n" not in str(e.value)


def test_result_key_holds_only_what_decides_the_outputs():
    local = EvaluateConfig(engine="hf")
    assert local.key() == {k: v for k, v in asdict(local).items() if k not in ENGINE_FIELDS}  # keys unchanged
    served = EvaluateConfig(engine="openai", base_url="http://127.0.0.1:8000/v1", served_model="m",
                            request_timeout_s=5, api_key_env="K")
    key = served.key()
    assert key["base_url"] == "http://127.0.0.1:8000/v1" and key["served_model"] == "m" and key["engine"] == "openai"
    assert not {"request_timeout_s", "api_key_env", "request_retries", "vllm_gpu_memory"} & set(key)
    assert EvaluateConfig(engine="openai", base_url="http://127.0.0.1:9/v1", served_model="m").key() != key
    assert served.local() == EvaluateConfig(engine="continuous") and local.local() is local


def test_openai_engine_refuses_trained_methods_and_checks_ranges():
    from unisd.config import ConfigError, load_experiment

    served = ["evaluate.engine=openai", "evaluate.base_url=http://127.0.0.1:8000/v1", "evaluate.served_model=m"]
    assert load_experiment("smoke", overrides=[*served, "methods=[base]"], check_model=False).evaluate.remote
    with pytest.raises(ConfigError, match="methods: evaluate.engine=openai scores the server's one model"):
        load_experiment("smoke", overrides=[*served, "methods=[base, sd]"], check_model=False)
    with pytest.raises(ConfigError, match="evaluate.request_timeout_s: must be > 0"):
        load_experiment("smoke", overrides=[*served, "evaluate.request_timeout_s=0"], check_model=False)
    with pytest.raises(ConfigError, match=r"evaluate.vllm_gpu_memory: must be in \(0, 1\)"):
        load_experiment("smoke", overrides=["evaluate.vllm_gpu_memory=1.5"], check_model=False)


def _mcqa_examples(n: int) -> pa.Table:
    rows = [dict(id=f"mc/{i:02d}", dataset="mc", split="test", family="mcqa",
                 prompt=f"Question {i}? " + "Think. " * (i % 4) + "A or B", reference="Answer: A", rationale=None,
                 options=["yes", "no"], answer="A", tests=None, meta="{}") for i in range(n)]
    return schemas.conform(rows, schemas.EXAMPLES)


def test_streaming_engine_saves_each_chunk_as_it_finishes_and_resumes(tmp_path, tiny_lm):
    """The continuous engine gets every prompt in one call (its batch never drains at a chunk boundary);
    chunks are saved while it still decodes, so a run killed mid-call resumes with only the rest."""
    from engines.continuous import ContinuousGenerator

    model, tok = tiny_lm
    cfg = EvaluateConfig(chunk_size=2, batch_size=3, max_new_tokens={"mcqa": 6})
    calls: list[int] = []

    class Dies(ContinuousGenerator):
        def generate(self, prompts, sampling, progress=None, on_complete=None):
            calls.append(len(prompts))
            seen = []

            def counted(i, completion):
                seen.append(i)
                if len(seen) == 6:
                    raise KeyboardInterrupt
                on_complete(i, completion)

            return super().generate(prompts, sampling, progress, counted)

    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, _mcqa_examples(9), Dies(model, tok, batch_size=3), ws, "tiny", "base")
    assert calls == [9]  # one call for the whole family
    assert sum(t.num_rows for t in ws.load_progress()) == 4  # two chunks of two saved before the kill

    class Counts(ContinuousGenerator):
        def generate(self, prompts, sampling, progress=None, on_complete=None):
            calls.append(len(prompts))
            return super().generate(prompts, sampling, progress, on_complete)

    out = run(cfg, _mcqa_examples(9), Counts(model, tok, batch_size=3), ws, "tiny", "base")
    assert calls == [9, 5]
    ids = out["predictions"].column("id").to_pylist()
    assert ids == sorted(set(ids)) and len(ids) == 9
    full = run(cfg, _mcqa_examples(9), ContinuousGenerator(model, tok, batch_size=3),
               Workspace.create(tmp_path / "ws2"), "tiny", "base")
    assert out["predictions"].column("completion").to_pylist() == full["predictions"].column("completion").to_pylist()
    chunked = run(cfg, _mcqa_examples(9), HFGenerator(model, tok, batch_size=3), Workspace.create(tmp_path / "ws3"),
                  "tiny", "base")
    assert chunked["predictions"].column("id").to_pylist() == ids

from pathlib import Path

import pytest

from engines.models import ModelConfig
from unisd.config import CONFIG_DIR, ExperimentConfig, load_experiment
from unisd.configtools import ConfigError, apply_overrides, field_docs


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_loads(path: Path):
    exp = load_experiment(preset=path.stem, check_model=False)
    assert isinstance(exp, ExperimentConfig)
    assert exp.datasets


def test_overrides_are_typed_and_applied():
    exp = load_experiment("smoke", overrides=["evaluate.batch_size=2", "datasets.0.limit=1",
                                              "evaluate.max_new_tokens.code=5"], check_model=False)
    assert exp.evaluate.batch_size == 2
    assert exp.datasets[0].limit == 1
    assert exp.evaluate.max_new_tokens["code"] == 5


@pytest.mark.parametrize("override,message", [
    ("evaluate.batch_sise=2", "evaluate.batch_sise: unknown key"),
    ("evaluate.batch_size=two", "evaluate.batch_size: expected an integer"),
    ("evaluate.batch_size=0", "evaluate.batch_size: must be >= 1, got 0"),
    ("evaluate.temperature=[1]", "evaluate.temperature: expected a number"),
    ("datasets.0.dataset=imagenet", "unknown dataset 'imagenet'"),
    ("datasets.9.limit=1", "not a valid index"),
    ("model.dtype=float8", "model.dtype: must be one of"),
    ("model.path=/nonexistent/model", "does not exist"),
    ("methods=[base,unknown]", "unknown method 'unknown'"),
    ("nokey", "expected key=value"),
    ("seeds=[1,1]", "seeds: a seed is listed twice"),
    ("transfer=[{train: medmcqa, evaluate: gpqa}]", "transfer[0].evaluate: 'gpqa' is not one of the datasets"),
    ("transfer=[{train: medmcqa, evaluate: medmcqa}]", "train and evaluate are the same dataset"),
    ("analyze.confidence=1.2", "analyze.confidence: must be in (0, 1), got 1.2"),
    ("datasets.2.dataset=medmcqa", "datasets: the same dataset is listed twice"),
])
def test_bad_config_is_one_clear_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_experiment("smoke", overrides=[override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_one_dataset_under_two_names_is_two_datasets():
    exp = load_experiment("candidates", check_model=False)
    labels = [d.label for d in exp.datasets]
    assert len(labels) == len(set(labels)) and sum(d.dataset == "math" for d in exp.datasets) >= 4


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match="known: .*default"):
        load_experiment("nope")


def test_extends_merges_deeply(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("extends: smoke\nevaluate:\n  batch_size: 3\n")
    exp = load_experiment(config=str(cfg), check_model=False)
    assert exp.evaluate.batch_size == 3
    assert exp.evaluate.max_new_tokens["code"] == 12  # inherited from smoke


def test_apply_overrides_does_not_mutate():
    data = {"a": {"b": 1}}
    out = apply_overrides(data, ["a.b=2"])
    assert data == {"a": {"b": 1}} and out == {"a": {"b": 2}}


def test_every_config_field_is_documented():
    import dataclasses

    def walk(cls, seen):
        if cls in seen:
            return
        seen.add(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert f.name in docs, f"{cls.__name__}.{f.name} has no docstring"
            for t in (f.type if isinstance(f.type, type) else None,):
                if t is not None and dataclasses.is_dataclass(t):
                    walk(t, seen)

    from engines.models import ModelConfig
    from stages.evaluate import EvaluateConfig
    from stages.ingest import IngestConfig

    for cls in (ExperimentConfig, ModelConfig, EvaluateConfig, IngestConfig):
        walk(cls, set())


def test_sweep_seeds_reach_each_training_run():
    exp = load_experiment("smoke_sweep")
    assert exp.seed_list == (0, 1) and load_experiment("smoke").seed_list == (0,)
    assert [exp.run_config("sd", s).seed for s in exp.seed_list] == [0, 1]
    assert exp.transfer[0].train == "medmcqa" and exp.transfer[0].evaluate == "math"


def test_llm_generators_default_to_the_experiments_model():
    exp = load_experiment("distill", overrides=["model.path=embedded:tiny-random-llama"])
    assert exp.negatives_config().llm.generator.model == "embedded:tiny-random-llama"
    assert exp.induction_config().generator.model == "embedded:tiny-random-llama"
    other = exp.for_model(ModelConfig(path="embedded:smollm2-135m-instruct"))
    assert other.negatives_config().llm.generator.model == "embedded:smollm2-135m-instruct"
    kept = load_experiment("distill", overrides=["negatives.llm.generator.model=embedded:smollm2-135m-instruct",
                                                 "model.path=embedded:tiny-random-llama"])
    assert kept.negatives_config().llm.generator.model == "embedded:smollm2-135m-instruct"
    with pytest.raises(ConfigError, match="generator.model .* is required with backend openai"):
        load_experiment("distill", overrides=["induction.generator.backend=openai",
                                              "induction.generator.base_url=http://127.0.0.1:1/v1"])

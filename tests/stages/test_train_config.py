"""TrainConfig validation, documentation, and the method presets in configs/methods/."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from stages.train import TrainConfig
from unisd.configtools import ConfigError, build, field_docs

METHODS = Path(__file__).resolve().parents[2] / "configs" / "methods"
EXPECTED = {"sd", "ema", "contrastive", "match_repr", "match_joint", "clip", "clip_quantile", "unisd_star",
            "sft", "ssd", "sdft", "gkd", "opsd"} | {
    f"agreement_{lvl}_{s}" for lvl in ("tok", "seq") for s in ("random", "retrieval", "induction")}


def _load(name: str) -> TrainConfig:
    return build(TrainConfig, yaml.safe_load((METHODS / f"{name}.yaml").read_text()) or {})


@pytest.mark.parametrize("override,message", [
    ({"contrastive": {"weight": 0.1}}, "contrastive.weight > 0 needs contrastive.sources"),
    ({"contrastive": {"sources": ["corrupt"]}}, "contrastive.sources set but contrastive.weight is 0"),
    ({"agreement": {"level": "token", "num_views": 0}}, "needs agreement.num_views >= 1"),
    ({"clip": {"max_value": 5.0, "quantile": 0.9}}, "clip.max_value and clip.quantile are exclusive"),
    ({"features": {"weight": 0.1}}, "features.weight > 0 needs features.mode repr or joint"),
    ({"features": {"mode": "joint"}}, "features.mode=joint needs features.weight > 0"),
    ({"teacher": {"ema_beta": 0.9}}, "teacher.ema_beta/ema_every need teacher.kind=ema"),
    ({"teacher": {"kind": "ema", "ema_beta": 1.0}}, "teacher.ema_beta: must be in [0, 1), got 1"),
    ({"divergence": {"beta": 0.3}}, "divergence.beta is only used by kind=jsd"),
    ({"divergence": {"weight": 0.0}}, "every loss term has weight 0"),
    ({"divergence": {"weight": 0.0}, "sft": {"weight": 1.0}, "agreement": {"level": "token"}},
     "agreement weights scale the divergence term, whose weight is 0"),
    ({"features": {"mode": "repr", "weight": 1.0}, "clip": {"max_value": 3.0}}, "clip caps the divergence term"),
    ({"batch_size": 6, "grad_accum": 4}, "batch_size=6 must be divisible by grad_accum=4"),
    ({"rollout": {"top_p": 0.0}}, "rollout.top_p: must be in (0, 1], got 0"),
    ({"lora": {"dropout": 1.0}}, "lora.dropout: must be in [0, 1), got 1"),
    ({"steps": 0}, "steps: must be >= 1, got 0"),
])
def test_incoherent_configs_fail_with_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        build(TrainConfig, override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_every_field_is_documented():
    def walk(cls):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert f.name in docs, f"{cls.__name__}.{f.name} has no docstring"
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default))

    walk(TrainConfig)


def test_presets_exist_and_load():
    assert {p.stem for p in METHODS.glob("*.yaml")} == EXPECTED
    for name in sorted(EXPECTED):
        assert isinstance(_load(name), TrainConfig), name


def _leaves(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_hold_only_fields_that_differ_from_defaults(name):
    data = yaml.safe_load((METHODS / f"{name}.yaml").read_text()) or {}
    default = TrainConfig()
    for key, value in _leaves(data):
        current = default
        for part in key.split("."):
            current = getattr(current, part)
        current = list(current) if isinstance(current, tuple) else current
        assert current != value, f"{name}: {key} repeats the default {value!r}"


def test_unisd_star_combines_the_four_mechanisms_with_effective_gamma():
    cfg = _load("unisd_star")
    assert (cfg.agreement.level, cfg.agreement.num_views) == ("token", 3)
    assert cfg.agreement.gamma >= 0.1  # not the orchestrator's 0.001 that leaves every weight at ~1
    assert cfg.teacher.kind == "ema" and cfg.contrastive.weight > 0 and cfg.features.mode == "joint"
    assert cfg.clip.max_value is None and cfg.clip.quantile is None
    assert _load("match_repr").divergence_weight == 0.0 and _load("sd").divergence_weight == 1.0

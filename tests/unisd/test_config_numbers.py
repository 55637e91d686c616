"""`1e-4` is a number: in overrides and in YAML files (PyYAML's YAML 1.1 rules read it as a string)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unisd.config import load_experiment
from unisd.configtools import ConfigError, load_yaml, parse_override


@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), ("3E5", 3e5), ("-2e+3", -2e3), (".5e-3", 5e-4),
                                        ("1.0e-4", 1e-4), ("12", 12), ("e5", "e5"), ("1e", "1e")])
def test_exponent_floats_are_numbers(text: str, value: object) -> None:
    assert load_yaml(f"x: {text}") == {"x": value}
    assert parse_override(f"a.b={text}") == (["a", "b"], value)


def test_lr_override_is_accepted() -> None:
    exp = load_experiment("smoke", overrides=["train.lr=1e-4"], check_model=False)
    assert exp.train.lr == pytest.approx(1e-4) and isinstance(exp.train.lr, float)


def test_lr_in_a_yaml_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("extends: smoke\ntrain:\n  lr: 1e-4\n  weight_decay: 5e-3\n")
    exp = load_experiment(config=str(path), check_model=False)
    assert (exp.train.lr, exp.train.weight_decay) == (pytest.approx(1e-4), pytest.approx(5e-3))


def test_a_word_is_still_not_a_number() -> None:
    with pytest.raises(ConfigError, match=r"train.lr: expected a number, got 'fast'"):
        load_experiment("smoke", overrides=["train.lr=fast"], check_model=False)

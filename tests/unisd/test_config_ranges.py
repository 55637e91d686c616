"""Every numeric config value is range-checked up front, with one line naming its dotted key.

The walk below visits every int/float field of the resolved default experiment (nested configs, list
items such as ``datasets.N.limit`` and ``seeds.N``, mapping values such as
``evaluate.max_new_tokens.code``), including optional fields that are null by default, sets bad values
derived from the field's declared range (below it, above it, NaN, a string, a fraction for an int)
and expects `load_experiment` (config resolution only: no model, no data) to refuse each with a
one-line ConfigError naming that key. A numeric field with no declared range fails the walk.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

import pytest

from unisd.config import ExperimentConfig, load_experiment
from unisd.configtools import ConfigError
from unisd.constraints import Bound, rules

# one item in each list of numbers, so the walk reaches `seeds.0` too
BASE = ["seeds=[3]", "calibrate.seeds=[0]"]


def _numeric(tp: Any) -> type | None:
    """int or float for a (possibly optional) numeric type, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        kinds = [_numeric(a) for a in typing.get_args(tp) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else None
    return tp if tp in (int, float) else None


def _fields(obj: Any, key: list[str], where: str):
    """(override key, message key, class, field, int|float) of every number reachable from ``obj``."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        k, w = [*key, f.name], f"{where}.{f.name}" if where else f.name
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, k, w)
        elif origin is tuple and args and dataclasses.is_dataclass(args[0]):
            if not value:  # nothing to override: such an item class must hold no numbers
                assert not list(_class_numbers(args[0])), f"{w}: add an item to BASE so the walk covers it"
            for i, item in enumerate(value):
                yield from _fields(item, [*k, str(i)], f"{w}[{i}]")
        elif origin is tuple and args and _numeric(args[0]):
            assert value, f"{w}: add an item to BASE so the walk covers it"
            for i in range(len(value)):
                yield [*k, str(i)], f"{w}[{i}]", cls, f.name, _numeric(args[0])
        elif origin is dict and args and _numeric(args[1]):
            for name in value:
                yield [*k, name], f"{w}.{name}", cls, f.name, _numeric(args[1])
        elif _numeric(tp):
            yield k, w, cls, f.name, _numeric(tp)


def _class_numbers(cls: type):
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name])]


def _bad_values(bound: Bound, kind: type) -> list[str]:
    """YAML texts of values the bound (or the type) must refuse."""
    step = 1 if kind is int else 0.5
    bad = [".nan", "'many'"] + (["1.5"] if kind is int else [".inf"])
    if bound.low is not None:
        bad.append(str(bound.low if bound.low_open else bound.low - step))
    if bound.high is not None:
        bad.append(str(bound.high if bound.high_open else bound.high + step))
    return bad


DEFAULT = load_experiment("default", overrides=BASE, check_model=False)
FIELDS = list(_fields(DEFAULT, [], ""))


def test_the_walk_reaches_the_keys_named_in_bug_reports():
    keys = {w for _, w, *_ in FIELDS}
    assert {"evaluate.sandbox_timeout_s", "evaluate.temperature", "evaluate.max_new_tokens.code",
            "datasets[0].limit", "datasets[2].limit", "seeds[0]", "train.lora.r",
            "negatives.llm.generator.top_p", "induction.generator.timeout_s", "threads"} <= keys
    assert len(FIELDS) > 100


def test_every_numeric_field_declares_its_range():
    missing = sorted({f"{c.__name__}.{n}" for _, _, c, n, _ in FIELDS if n not in rules().get(c, {})})
    assert not missing, f"declare a range in unisd/constraints.py for {missing}"
    stale = sorted(f"{c.__name__}.{n}" for c, table in rules().items() for n in table
                   if n not in {f.name for f in dataclasses.fields(c)})
    assert not stale, f"unisd/constraints.py names fields that do not exist: {stale}"


@pytest.mark.parametrize(("key", "where", "cls", "name", "kind"), FIELDS, ids=[w for _, w, *_ in FIELDS])
def test_bad_number_is_refused_naming_its_key(key, where, cls, name, kind):
    bound = rules()[cls][name]
    for text in _bad_values(bound, kind):
        override = f"{'.'.join(key)}={text}"
        with pytest.raises(ConfigError) as err:
            load_experiment("default", overrides=[*BASE, override], check_model=False)
        message = str(err.value)
        assert message.startswith(f"{where}: "), (override, message)
        assert "\n" not in message


def test_the_default_value_of_every_field_is_within_its_range():
    for key, where, cls, name, _ in FIELDS:
        value: Any = DEFAULT
        for part in key:
            value = value[int(part)] if isinstance(value, tuple) else (
                value[part] if isinstance(value, dict) else getattr(value, part))
        assert value is None or rules()[cls][name].problem(value) is None, where


@pytest.mark.parametrize(("override", "message"), [
    ("evaluate.sandbox_timeout_s=0", "evaluate.sandbox_timeout_s: must be > 0, got 0"),
    ("evaluate.temperature=-1", "evaluate.temperature: must be >= 0, got -1"),
    ("evaluate.max_new_tokens.code=-5", "evaluate.max_new_tokens.code: must be >= 1, got -5"),
    ("datasets.1.test_fraction=1.5", "datasets[1].test_fraction: must be in [0, 1], got 1.5"),
    ("analyze.confidence=1", "analyze.confidence: must be in (0, 1), got 1"),
    ("train.rollout.top_p=.nan", "train.rollout.top_p: must be a finite number, got nan"),
])
def test_reported_keys_fail_with_the_exact_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_experiment("default", overrides=[override], check_model=False)
    assert str(err.value) == message


def test_every_config_class_in_the_experiment_has_a_table_entry_or_no_numbers():
    seen: set[type] = set()

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for t in (hints[f.name], *typing.get_args(hints[f.name])):
                if dataclasses.is_dataclass(t):
                    walk(t)
        numbers = _class_numbers(cls)
        assert not numbers or cls in rules(), f"{cls.__name__} has numeric fields {numbers} but no ranges"

    walk(ExperimentConfig)

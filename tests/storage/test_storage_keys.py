"""Cache keys: stable for equal inputs, different for any change that alters an artifact's meaning."""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path

import pyarrow as pa
import pytest

import schemas
from storage import StageSpec, artifact_key, canonical_json

K1, K2 = "a" * 64, "b" * 64


@dataclasses.dataclass(frozen=True)
class Inner:
    temperature: float = 0.7
    stop: tuple[str, ...] = ("\n\n",)


@dataclasses.dataclass(frozen=True)
class Cfg:
    num_samples: int = 4
    seed: int = 0
    model: str = "tiny"
    out: Path = Path("/x/y")
    inner: Inner = dataclasses.field(default_factory=Inner)


class Mode(enum.Enum):
    FAST = "fast"


def test_canonical_json_sorted_compact_and_converted():
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert canonical_json(Cfg()) == (
        '{"inner":{"stop":["\\n\\n"],"temperature":0.7},"model":"tiny","num_samples":4,'
        '"out":"/x/y","seed":0}')
    assert canonical_json({"m": Mode.FAST, "s": {3, 1, 2}, "t": (1, None, True)}) == \
        '{"m":"fast","s":[1,2,3],"t":[1,null,true]}'
    assert canonical_json(0.1) == "0.1" and canonical_json(1e-300) == "1e-300"
    assert json.loads(canonical_json(Cfg()))["inner"]["temperature"] == 0.7


@pytest.mark.parametrize("bad, where", [
    ({"a": {"b": object()}}, "$.a.b"),
    ({"x": [1, float("nan")]}, "$.x[1]"),
    ({"x": float("inf")}, "$.x"),
    ({1: "int key"}, "non-string key"),
    ({"b": b"bytes"}, "$.b"),
])
def test_canonical_json_rejects_unserialisable_with_location(bad, where):
    with pytest.raises(TypeError, match="canonical_json") as err:
        canonical_json(bad)
    assert where in str(err.value)


def _spec(version: int = 1, out: schemas.TableSchema = schemas.SCORES) -> StageSpec:
    return StageSpec("evaluate", version, {"examples": schemas.EXAMPLES}, {"scores": out})


def test_key_is_stable_full_hex_and_ignores_dict_order():
    cfg = {"a": 1, "b": {"x": 1, "y": [1, 2]}}
    same = {"b": {"y": [1, 2], "x": 1}, "a": 1}
    k = artifact_key(_spec(), cfg, {"examples": K1, "model": K2})
    assert len(k) == 64 and int(k, 16) >= 0
    assert k == artifact_key(_spec(), same, {"model": K2, "examples": K1})
    assert artifact_key(_spec(), Cfg(), {}) == artifact_key(_spec(), dataclasses.asdict(Cfg()), {})


@pytest.mark.parametrize("field_name, value", [
    ("num_samples", 5), ("seed", 1), ("model", "tiny2"), ("out", Path("/x/z")),
    ("inner", Inner(temperature=0.70001)), ("inner", Inner(stop=("\n",))),
])
def test_any_config_field_change_changes_key(field_name, value):
    base = artifact_key(_spec(), Cfg(), {"examples": K1})
    changed = dataclasses.replace(Cfg(), **{field_name: value})
    assert artifact_key(_spec(), changed, {"examples": K1}) != base


def test_version_inputs_and_schemas_change_key():
    base = artifact_key(_spec(), Cfg(), {"examples": K1})
    assert artifact_key(_spec(version=2), Cfg(), {"examples": K1}) != base
    assert artifact_key(_spec(), Cfg(), {"examples": K2}) != base
    assert artifact_key(_spec(), Cfg(), {"train": K1}) != base
    assert artifact_key(_spec(), Cfg(), {"examples": K1, "model": K2}) != base
    wider = schemas.TableSchema("scores", schemas.SCORES.schema.append(pa.field("extra", pa.string())))
    assert artifact_key(_spec(out=wider), Cfg(), {"examples": K1}) != base
    other_input = StageSpec("evaluate", 1, {"examples": wider}, {"scores": schemas.SCORES})
    assert artifact_key(other_input, Cfg(), {"examples": K1}) != base
    renamed = StageSpec("evaluate2", 1, {"examples": schemas.EXAMPLES}, {"scores": schemas.SCORES})
    assert artifact_key(renamed, Cfg(), {"examples": K1}) != base


def test_int_and_float_config_values_are_distinct():
    assert artifact_key(_spec(), {"lr": 1}, {}) != artifact_key(_spec(), {"lr": 1.0}, {})


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "Bad-Name"}, "stage name"),
    ({"name": ".hidden"}, "stage name"),
    ({"version": -1}, "version"),
    ({"version": True}, "version"),
    ({"outputs": {"bad name": schemas.SCORES}}, "table name"),
    ({"outputs": {"scores": schemas.SCORES.schema}}, "TableSchema"),
])
def test_stage_spec_rejects_invalid(kwargs, match):
    args = {"name": "evaluate", "version": 1, "inputs": {}, "outputs": {"scores": schemas.SCORES}} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        StageSpec(**args)


def test_invalid_input_key_rejected():
    with pytest.raises(ValueError, match="invalid artifact key"):
        artifact_key(_spec(), {}, {"examples": ""})

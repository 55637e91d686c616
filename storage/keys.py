"""Stage specs, canonical JSON and content-derived artifact keys.

An artifact's key is a sha256 over everything that determines its content: the stage name and
hand-bumped version, the resolved config, the keys of the artifacts it read, and the fingerprints of
the schemas it reads and writes. Same key => the stored artifact is reused; anything that changes the
meaning of the output must change one of these inputs. Unlike a bytecode hash, the key survives
refactors, and unlike a timestamp it is reproducible across machines.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from schemas import TableSchema

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
"""Stage and table names: lowercase identifiers, safe as directory names and SQL view names."""
KEY_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StageSpec:
    """What a stage is: its name, hand-bumped version, and the schemas it reads and writes."""

    name: str
    version: int
    inputs: dict[str, TableSchema]
    """Input table name -> schema."""
    outputs: dict[str, TableSchema]
    """Output table name -> schema; each becomes ``<table>.parquet`` in the artifact."""

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"stage name {self.name!r} must match {NAME_RE.pattern}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise ValueError(f"stage {self.name}: version must be a non-negative int, got {self.version!r}")
        for kind, tables in (("input", self.inputs), ("output", self.outputs)):
            for table, ts in tables.items():
                if not NAME_RE.match(table):
                    raise ValueError(f"stage {self.name}: {kind} table name {table!r} "
                                     f"must match {NAME_RE.pattern}")
                if not isinstance(ts, TableSchema):
                    raise TypeError(f"stage {self.name}: {kind} {table!r} must be a TableSchema, "
                                    f"got {type(ts).__name__}")


def _plain(obj: Any, where: str) -> Any:
    """Convert ``obj`` to JSON-native types (dict/list/str/int/float/bool/None), or raise TypeError."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return _plain(obj.value, where)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise TypeError(f"canonical_json: {where} is {obj!r}; non-finite floats are not allowed")
        return float(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"canonical_json: {where} has a non-string key {k!r} ({type(k).__name__})")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        items = [_plain(v, f"{where}{{}}") for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, PurePath):
        return str(obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return _plain(obj.item(), where)
    raise TypeError(f"canonical_json: {where} has unsupported type {type(obj).__name__}: {obj!r:.80}")


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` deterministically: sorted keys, no whitespace, floats by shortest repr.

    Dataclasses become dicts, tuples become lists, paths become strings, enums their values, sets
    sorted lists. Anything else (and NaN/inf) raises TypeError naming where in ``obj`` it sits.
    """
    return json.dumps(_plain(obj, "$"), sort_keys=True, separators=(",", ":"), allow_nan=False)


def artifact_key(spec: StageSpec, config: Any, input_keys: Mapping[str, str]) -> str:
    """sha256 (64 hex chars) of the stage identity, config, input artifact keys and schema fingerprints."""
    for name, key in input_keys.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"stage {spec.name}: input {name!r} has an invalid artifact key {key!r}")
    payload = {
        "stage": spec.name,
        "version": spec.version,
        "config": _plain(config, "config"),
        "inputs": sorted([name, key] for name, key in input_keys.items()),
        "input_schemas": {name: ts.fingerprint() for name, ts in spec.inputs.items()},
        "output_schemas": {name: ts.fingerprint() for name, ts in spec.outputs.items()},
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()

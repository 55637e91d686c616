"""Typed configuration from YAML presets and dotted overrides.

Configs are frozen dataclasses with attribute docstrings. `build(cls, data)` turns plain YAML data
into a dataclass, rejecting unknown keys, badly typed values and numbers outside their range
(`unisd.constraints`) with one line naming the dotted field (``evaluate.batch_size: expected an
integer, got 'x'``, ``evaluate.temperature: must be >= 0, got -1``). `apply_overrides` merges ``a.b.c=value``
strings (values parsed as YAML scalars) into the raw data before building, so validation runs once on
the final config, before any work starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import yaml

if TYPE_CHECKING:
    from unisd.constraints import Bound

Rules = Mapping[type, Mapping[str, "Bound"]]


class ConfigError(ValueError):
    """A configuration is invalid; the message is one line naming the field."""


FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
"""Exponent floats without a dot or an exponent sign (``1e-4``, ``3E5``): numbers in YAML 1.2 and to
every user, but strings to PyYAML's YAML 1.1 rules."""


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2 exponent floats (``1e-4``) as numbers."""


Loader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_12, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """`yaml.safe_load` with ``1e-4`` read as a number."""
    return yaml.load(text, Loader=Loader)


def build(cls: type, data: Any, path: str = "", rules: Rules | None = None) -> Any:
    """Construct dataclass ``cls`` from a mapping, recursively, with typed validation.

    Numbers are checked against ``rules`` (default: `unisd.constraints.rules()`) before any
    ``__post_init__`` runs, so a range error always names the dotted key."""
    if rules is None:
        from unisd.constraints import rules as default_rules

        rules = default_rules()
    where = path or cls.__name__
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown key (valid: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(hints[name], value, _join(path, name), rules) for name, value in data.items()}
    for name, value in kwargs.items():
        bound = rules.get(cls, {}).get(name)
        if bound is not None:
            _check_numbers(bound, value, _join(path, name))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check_numbers(bound: Bound, value: Any, path: str) -> None:
    """Check a number, or each number of a list or mapping field, against ``bound``."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(bound, v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(bound, v, f"{path}.{k}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = bound.problem(value)
        if problem is not None:
            raise ConfigError(f"{path}: {problem}")


def _coerce(tp: Any, value: Any, path: str, rules: Rules) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path, rules)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: invalid value {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{path}: must be one of {choices}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, rules)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{path}[{i}]", rules) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, vt = get_args(tp) or (Any, Any)
        return {str(k): _coerce(vt, v, f"{path}.{k}", rules) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and FLOAT_12.match(value.strip()):
            value = float(value.replace("_", ""))  # a YAML 1.1 loader read 1e-4 as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a config, for manifests and YAML dumps."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"evaluate.batch_size=8"`` -> (["evaluate", "batch_size"], 8). Values are YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a deep copy of ``data`` with dotted overrides applied (list items by index: ``datasets.0.limit=5``)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = out
        for i, k in enumerate(keys[:-1]):
            node = _step(node, k, text, create=True)
        last = keys[-1]
        if isinstance(node, list):
            idx = _index(node, last, text)
            node[idx] = value
        else:
            node[last] = value
    return out


def _step(node: Any, key: str, text: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, text)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {text!r}: {key!r} is not inside a mapping")
    if key not in node or node[key] is None:
        node[key] = {}
    return node[key]


def _index(node: list, key: str, text: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"override {text!r}: {key!r} is not a valid index (list has {len(node)} items)")
    return int(key)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field), for docs/CLI."""
    import ast
    import inspect
    import textwrap

    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for a, b in itertools.pairwise(body):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(getattr(b, "value", None), ast.Constant)):
            docs[a.target.id] = " ".join(str(b.value.value).split())
    return docs


def reference_markdown(cls: type, prefix: str = "") -> str:
    """A Markdown table of every knob of ``cls`` (dotted key, default, meaning), recursing into nested configs."""
    rows: list[str] = []
    _reference_rows(cls, prefix, rows)
    return "| key | default | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def _reference_rows(cls: type, prefix: str, rows: list[str]) -> None:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            _reference_rows(tp, key + ".", rows)
            continue
        item = get_args(tp)[0] if get_origin(tp) in (tuple, list) and get_args(tp) else None
        if item is not None and dataclasses.is_dataclass(item):
            rows.append(f"| `{key}` | `[]` | {docs.get(f.name, '')} Each item: |")
            _reference_rows(item, key + "[].", rows)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        shown = yaml.safe_dump(to_dict(default), default_flow_style=True, width=10_000).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        rows.append(f"| `{key}` | `{shown}` | {docs.get(f.name, '').replace('|', '/')} |")


def deep_merge(base: dict, child: dict) -> dict:
    """Deep merge of plain config data; the child wins, nested mappings merge key by key."""
    out = dict(base)
    for k, v in child.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

"""The experiment configuration: YAML presets in `configs/` plus dotted overrides.

`ExperimentConfig` composes the stage configs. A preset may start with ``extends: <preset>`` to
inherit another preset and change only what differs. Everything is validated here, before any work
starts: unknown keys, badly typed values, unknown datasets, a missing model folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engines.models import ModelConfig, resolve_path
from stages.evaluate import EvaluateConfig
from stages.ingest import REGISTRY, IngestConfig
from unisd.configtools import ConfigError, apply_overrides, build

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "default"
    """Experiment label (shown in reports; not part of any cache key)."""
    store: str = "runs"
    """Artifact store directory (relative to the working directory unless absolute); $UNISD_STORE overrides."""
    seed: int = 0
    """Global seed, passed to every stage that samples."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model (student, and teacher through its views)."""
    datasets: tuple[IngestConfig, ...] = ()
    """Dataset sources to ingest; each becomes an `examples` artifact."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """How models are evaluated on each dataset's test split."""
    methods: tuple[str, ...] = ("base",)
    """Runs to evaluate: `base` is the untouched model; training methods add their presets' names."""

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets: at least one dataset is required")
        for i, d in enumerate(self.datasets):
            if d.dataset not in REGISTRY:
                raise ValueError(f"datasets[{i}].dataset: unknown dataset {d.dataset!r} "
                                 f"(known: {', '.join(sorted(REGISTRY))})")
        names = [d.dataset if d.dataset != "local" else (d.path or "") for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("datasets: the same dataset is listed twice")
        unknown = [m for m in self.methods if m != "base"]
        if unknown:
            raise ValueError(f"methods: unknown method {unknown[0]!r} (available: base)")

    @property
    def store_path(self) -> Path:
        return Path(os.environ.get("UNISD_STORE") or self.store).expanduser().resolve()


def preset_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"preset {name!r} not found (known: {known})")
    return path


def load_raw(path: Path, seen: tuple[str, ...] = ()) -> dict:
    """Read a YAML config, resolving ``extends:`` chains (deep merge, child wins)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if parent in seen:
        raise ConfigError(f"{path}: circular extends via {parent!r}")
    return _merge(load_raw(preset_path(parent), seen + (parent,)), data)


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_experiment(preset: str | None = None, config: str | None = None,
                    overrides: list[str] | tuple[str, ...] = (), check_model: bool = True) -> ExperimentConfig:
    """Build and validate an experiment from a preset name or a YAML path, plus dotted overrides."""
    if preset and config:
        raise ConfigError("give either a preset or a config file, not both")
    path = Path(config) if config else preset_path(preset or "default")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    raw = apply_overrides(load_raw(path), list(overrides))
    exp = build(ExperimentConfig, raw)
    if check_model:
        try:
            if not exp.model.path.startswith("embedded:"):
                resolve_path(exp.model.path)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return exp

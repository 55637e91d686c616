"""The experiment configuration: YAML presets in `configs/` plus dotted overrides.

`ExperimentConfig` composes the stage configs. A preset may start with ``extends: <preset>`` to
inherit another preset and change only what differs. Everything is validated here, before any work
starts: unknown keys, badly typed values, numbers out of range (`unisd.constraints`), unknown
datasets, a missing model folder or a truncated weight file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engines.models import ModelConfig, check_chat_template, resolve_path
from engines.weights import check_weights
from stages.analyze import AnalyzeConfig
from stages.calibrate import CalibrateConfig
from stages.contexts import ContextsConfig
from stages.evaluate import EvaluateConfig
from stages.induction import InductionConfig
from stages.ingest import REGISTRY, IngestConfig
from stages.negatives import NegativesConfig
from stages.retrieval import RetrievalConfig
from stages.signals import SignalsConfig
from stages.train import TrainConfig
from storage.tracking import check_backends
from unisd.configtools import ConfigError, apply_overrides, build, deep_merge, to_dict

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
METHOD_DIR = CONFIG_DIR / "methods"


def method_names() -> list[str]:
    return sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class TransferPair:
    """Evaluate the checkpoints trained on one dataset on another dataset's test split as well."""

    train: str
    """Label of the dataset the methods train on (e.g. scienceqa, mbpp)."""
    evaluate: str
    """Label of the dataset whose test split the checkpoints are also evaluated on (e.g. gpqa, humaneval)."""


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
    """Runs to evaluate: `base` (the untouched model) and/or method presets from `configs/methods/`
    (sd, unisd_star, ema, contrastive, ...), each trained with `train` overlaid by its preset."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training settings shared by every method (a method preset overrides some of them)."""
    contexts: ContextsConfig = field(default_factory=ContextsConfig)
    """Teacher views (privileged, auxiliary, negative); strategy and K come from each method."""
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    """Negative demonstrations for the contrastive term (built only when a method uses it)."""
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    """Nearest-neighbour donors for retrieval views (built only when a method uses them)."""
    induction: InductionConfig = field(default_factory=InductionConfig)
    """Induced task instructions for induction views (built only when a method uses them)."""
    models: tuple[ModelConfig, ...] = ()
    """Models to sweep: the whole experiment runs once per model, each with its own checkpoints,
    negatives, retention, comparisons and report (empty = `model` alone)."""
    seeds: tuple[int, ...] = ()
    """Training seeds: every method is trained once per seed (a sweep of methods × datasets × seeds);
    empty = the single seed `train.seed`. Tables report mean ± CI over seeds."""
    transfer: tuple[TransferPair, ...] = ()
    """Out-of-distribution pairs: checkpoints trained on `train` are also evaluated on `evaluate`."""
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    """Retention metrics, paired comparisons and the report (after every evaluation)."""
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    """Signal diagnostics before training: does the privileged teacher know more than the student?"""
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    """Choose each method's training setting on the validation split before the final runs (empty grid:
    no calibration). See `stages.calibrate`."""
    threads: int | None = None
    """CPU threads for torch and every worker process (None = $UNISD_THREADS, else the cores this process
    may use: its CPU affinity and cgroup quota, not the host's count; shared among local DDP processes)."""
    parallel: int = 1
    """Independent jobs run at once after the shared artifacts (ingest, negatives, retrieval, induction,
    contexts, signals) are built: each (method, seed, dataset) chain train → evaluate → analyze, each base
    evaluation and each calibration training with its validation scoring is one job. 1 = one after another
    in this process (the default); N > 1 = N job processes on this machine, each with `threads` / N CPU
    threads and, with `devices`, a device of its own; with `pool`, at most N jobs in flight on the pool."""
    devices: tuple[str, ...] = ()
    """Devices the local job processes are pinned to, one per process (`CUDA_VISIBLE_DEVICES` of each; a
    comma list like "0,1" gives one process two GPUs); empty = no pinning. Ignored with `pool` (pin each
    worker instead). Needs at least `parallel` entries."""
    pool: str | None = None
    """Prefect work pool that runs the jobs (deployment `unisd-job/<pool>`, registered by `unisd deploy
    --pool NAME`; its workers may be on other machines that see the same store path). Needs a Prefect
    server in PREFECT_API_URL. None = the jobs run on this machine."""
    tracking: tuple[str, ...] = ()
    """Experiment trackers that mirror every training step, the resolved config and the final scores, one
    run per (model, method, seed, dataset): any of mlflow, tensorboard, wandb (`pip install
    'unisd[tracking]'`). They write under `<store>/tracking/` (wandb offline) unless MLFLOW_TRACKING_URI,
    UNISD_TENSORBOARD_DIR, WANDB_DIR / WANDB_MODE say otherwise; never part of a cache key."""

    def __post_init__(self) -> None:
        check_backends(self.tracking)
        if not self.datasets:
            raise ValueError("datasets: at least one dataset is required")
        for i, d in enumerate(self.datasets):
            if d.dataset not in REGISTRY:
                raise ValueError(f"datasets[{i}].dataset: unknown dataset {d.dataset!r} "
                                 f"(known: {', '.join(sorted(REGISTRY))})")
        names = [d.label for d in self.datasets]  # one dataset may appear twice under two names (math tasks)
        if len(set(names)) != len(names):
            raise ValueError("datasets: the same dataset is listed twice (give one a different name)")
        known = method_names()
        unknown = [m for m in self.methods if m != "base" and m not in known]
        if unknown:
            raise ValueError(f"methods: unknown method {unknown[0]!r} (available: base, {', '.join(known)})")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: a method is listed twice")
        if self.evaluate.engine == "openai" and set(self.methods) != {"base"}:
            raise ValueError("methods: evaluate.engine=openai scores the server's one model, so methods must be "
                             "[base] (to score a checkpoint, serve its `unisd export --merged` folder)")
        for m in self.methods:
            if m != "base":
                self.method_config(m)  # validate every method's merged training config up front
        labels = [m.label for m in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError("models: two models have the same label (set model.name to tell them apart)")
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ValueError(f"threads: must be an integer >= 1 or null, got {self.threads!r}")
        if isinstance(self.parallel, bool) or not isinstance(self.parallel, int) or self.parallel < 1:
            raise ValueError(f"parallel: must be an integer >= 1, got {self.parallel!r}")
        if self.devices and len(self.devices) < self.parallel and self.pool is None:
            raise ValueError(f"devices: {len(self.devices)} device(s) for parallel: {self.parallel} job processes "
                             "(give one device per process, or leave devices empty)")
        if self.pool is not None and not self.pool.strip():
            raise ValueError("pool: empty work pool name (leave it null to run the jobs on this machine)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: a seed is listed twice")
        from stages.calibrate import point_label

        for point in self.calibrate.points():  # every grid point must make a valid training config
            for m in (m for m in self.methods if m != "base"):
                try:
                    self.run_config(m, 0, point)
                except ValueError as e:
                    raise ValueError(f"calibrate.grid point {point_label(point)} for {m}: {e}") from None
        labels = [d.label for d in self.datasets]
        for i, pair in enumerate(self.transfer):
            for side in ("train", "evaluate"):
                if getattr(pair, side) not in labels:
                    raise ValueError(f"transfer[{i}].{side}: {getattr(pair, side)!r} is not one of the datasets "
                                     f"({', '.join(labels)})")
            if pair.train == pair.evaluate:
                raise ValueError(f"transfer[{i}]: train and evaluate are the same dataset {pair.train!r}")

    def negatives_config(self) -> NegativesConfig:
        """`negatives` with its LLM defaulting to the experiment's own model (no stronger one)."""
        from dataclasses import replace

        gen = self.negatives.llm.generator
        if gen.model is not None:
            return self.negatives
        return replace(self.negatives, llm=replace(self.negatives.llm, generator=replace(gen, model=self.model.path)))

    def induction_config(self) -> InductionConfig:
        """`induction` with its LLM defaulting to the experiment's own model."""
        from dataclasses import replace

        gen = self.induction.generator
        return self.induction if gen.model is not None else replace(self.induction,
                                                                    generator=replace(gen, model=self.model.path))

    @property
    def model_list(self) -> tuple[ModelConfig, ...]:
        """The models the experiment runs on (`models`, or `model` alone)."""
        return self.models or (self.model,)

    def for_model(self, model: ModelConfig) -> ExperimentConfig:
        """This experiment on one model of a models sweep."""
        from dataclasses import replace

        return replace(self, model=model, models=())

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The training seeds of every method (`seeds`, or `train.seed` alone)."""
        return self.seeds or (self.train.seed,)

    def run_config(self, method: str, seed: int, point: dict | None = None) -> TrainConfig:
        """`method_config(method)` with its training seed set to `seed` and a calibration grid `point`
        (dotted training keys -> values) laid over it."""
        from dataclasses import replace

        from stages.calibrate import overlay

        cfg = self.method_config(method)
        if point:
            try:
                cfg = build(TrainConfig, overlay(to_dict(cfg), point), f"methods.{method}")
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return replace(cfg, seed=seed)

    def method_config(self, method: str) -> TrainConfig:
        """The training config of ``method``: `train` overlaid by `configs/methods/<method>.yaml`."""
        path = METHOD_DIR / f"{method}.yaml"
        try:
            overlay = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
        try:
            return build(TrainConfig, deep_merge(to_dict(self.train), overlay), f"methods.{method}")
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @property
    def store_path(self) -> Path:
        return Path(os.environ.get("UNISD_STORE") or self.store).expanduser().resolve()


def preset_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"preset {name!r} not found (known: {known}; methods: {', '.join(method_names())})")
    return path


def load_raw(path: Path, seen: tuple[str, ...] = ()) -> dict:
    """Read a YAML config, resolving ``extends:`` chains (deep merge, child wins)."""
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}, line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset "
                          f"{e.start}); save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if parent in seen:
        raise ConfigError(f"{path}: circular extends via {parent!r}")
    return deep_merge(load_raw(preset_path(parent), seen + (parent,)), data)


METHOD_PRESET_BASE = "distill"


def load_experiment(preset: str | None = None, config: str | None = None,
                    overrides: list[str] | tuple[str, ...] = (), check_model: bool = True) -> ExperimentConfig:
    """Build and validate an experiment from a preset name or a YAML path, plus dotted overrides.

    A method name (a file in `configs/methods/`) is also a preset: the `distill` experiment with
    ``methods: [base, <method>]``."""
    if preset and config:
        raise ConfigError("give either a preset or a config file, not both")
    name = preset or "default"
    if not config and not (CONFIG_DIR / f"{name}.yaml").exists() and name in method_names():
        raw = load_raw(preset_path(METHOD_PRESET_BASE))
        raw.update(name=name, methods=["base", name])
    else:
        path = Path(config) if config else preset_path(name)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        raw = load_raw(path)
    raw = apply_overrides(raw, list(overrides))
    exp = build(ExperimentConfig, raw)
    if check_model:
        try:
            for model in exp.model_list:
                if not model.path.startswith("embedded:"):
                    check_weights(resolve_path(model.path))
                    check_chat_template(model)  # no template: one line naming model.chat_template=plain
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return exp

"""Prefect wiring: the `unisd` flow (deployment `full`) and one flow per stage.

Only this package imports Prefect. Each stage is a task whose real cache is the artifact key in our
store (Prefect's own result cache is off: it cannot hold Parquet tables and its source-hash keys break
on refactors), so a rerun skips finished stages and a changed config reruns only what depends on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the in-process (ephemeral) API server can need more than Prefect's default 20 s on a loaded laptop
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pyarrow as pa  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows import calibration, fanout, tracking  # noqa: E402
from stages import pipeline  # noqa: E402
from stages.calibrate import point_label  # noqa: E402
from storage import Store  # noqa: E402
from unisd.config import ExperimentConfig, load_experiment  # noqa: E402

STAGES = ("ingest", "negatives", "retrieval", "induction", "contexts", "signals", "calibrate", "train", "evaluate", "analyze", "compare",
          "report")


def _config(preset: str | None, config_path: str | None, overrides: list[str] | None) -> ExperimentConfig:
    return load_experiment(preset=None if config_path else (preset or "default"), config=config_path,
                           overrides=overrides or [])


@task(name="stage", cache_policy=NO_CACHE, task_run_name="{stage}-{label}")
def stage_task(stage: str, label: str, store_root: str, exp: ExperimentConfig, args: dict, force: bool) -> str:
    """Materialise one artifact; ``args`` names its input artifacts by (stage, key) and its settings."""
    pipeline.configure_threads(exp.threads)
    store = Store(store_root)
    arts = {name: store.get(*ref) for name, ref in args.get("inputs", {}).items()}
    if stage == "ingest":
        art = pipeline.ingest(store, exp.datasets[args["index"]], force=force)
    elif stage == "negatives":
        art = pipeline.negatives(store, exp.negatives_config(), arts["examples"], force=force)
    elif stage == "retrieval":
        art = pipeline.retrieval(store, exp.retrieval, arts["examples"], force=force)
    elif stage == "induction":
        art = pipeline.induction(store, exp.induction_config(), arts["examples"], force=force)
    elif stage == "contexts":
        cfg = replace(exp.contexts, strategy=args["strategy"], num_views=args["num_views"])
        extra = {k: v for k, v in arts.items() if k != "examples"}
        art = pipeline.contexts(store, cfg, arts["examples"], extra, force=force)
    elif stage == "signals":
        art = pipeline.signals(store, exp.signals, exp.model, exp.evaluate, arts["examples"], arts["contexts"],
                               force=force)
    elif stage == "train":
        art = pipeline.train(store, exp.run_config(args["method"], args["seed"], args.get("point")), exp.model,
                             arts["examples"],
                             arts["contexts"], arts.get("negatives"), args["method"], force=force,
                             tracking=tracking.train_run(exp, args["method"], args["seed"], args["dataset"]))
    elif stage == "evaluate":
        ecfg = replace(exp.evaluate, split=args["split"], limit=args["limit"]) if "split" in args else exp.evaluate
        art = pipeline.evaluate(store, exp.model, ecfg, arts["examples"], method=args["method"],
                                checkpoint=arts.get("checkpoint"), seed=args.get("seed"),
                                trained_on=args.get("trained_on"), force=force)
    elif stage == "analyze":
        art = pipeline.analyze(store, exp.analyze, exp.model, arts["examples"], arts["evaluate"],
                               arts.get("checkpoint"), method=args["method"], seed=args.get("seed"),
                               trained_on=args.get("trained_on"), force=force)
    elif stage == "calibrate":
        art = pipeline.calibrate(store, exp.calibrate, _numbered(arts, "evaluate"), args["runs"], force=force)
    elif stage == "compare":
        art = pipeline.compare(store, exp.analyze, _numbered(arts, "evaluate"), _numbered(arts, "analyze"),
                               force=force)
    else:
        trainings = [(m, s, arts[f"train_{i}"]) for i, (m, s) in enumerate(args["runs"])]
        art = pipeline.report(store, exp.analyze, exp.name, _numbered(arts, "evaluate"), trainings,
                              _numbered(arts, "analyze"), arts.get("compare"), signals=_numbered(arts, "signals"),
                              calibration=_numbered(arts, "calibrate"),
                              force=force)
    tracking.log_results(exp, stage, args, arts, art)
    get_run_logger().info("%s %s: %s", stage, label, art.key[:12])
    return art.key


def _numbered(arts: dict, kind: str) -> list:
    return [arts[f"{kind}_{i}"] for i in range(sum(k.startswith(f"{kind}_") for k in arts))]


PREP = ("negatives", "retrieval", "induction", "contexts", "signals")


def run_experiment(exp: ExperimentConfig, force: set[str] = frozenset(), only: str | None = None) -> Runs:
    """Submit every stage the experiment needs, in dependency order; returns the runs' artifact refs.

    For each model of the experiment, every method is trained once per seed on every dataset with a
    train split, and each checkpoint is evaluated on its own dataset and on the `transfer` targets;
    then analyze, compare and the report (one per model). ``only`` names a preprocessing stage (or
    ingest) to run on every dataset with a train split, whether or not a method needs it; their refs
    are returned in `Runs.prepared`."""
    runs = Runs()
    for model in exp.model_list:
        runs.merge(_run_model(exp.for_model(model), force, only, f"@{model.label}" if exp.models else ""))
    return runs


JOB_STAGES = frozenset({"train", "evaluate", "analyze"})
"""The stages a job runs; when jobs were fanned out, the flow collects their artifacts unforced."""


def runner(exp: ExperimentConfig, force: set[str] | frozenset[str], suffix: str = "") -> Callable:
    """``run(stage, label, **args) -> (stage, key)``: one stage as a task of the current flow run."""
    root = str(exp.store_path)

    def run(stage: str, label: str, **args) -> tuple[str, str]:
        return stage, stage_task(stage, label + suffix, root, exp, args, stage in force)

    return run


def _run_model(exp: ExperimentConfig, force: set[str], only: str | None, suffix: str) -> Runs:
    """`run_experiment` on the experiment's single model; `suffix` tags its task names."""
    if only is None:
        with fanout.job_processes(exp) as processes:  # they start while the shared stages run
            return _run_stages(exp, force, None, suffix, processes)
    return _run_stages(exp, force, only, suffix, None)


def _run_stages(exp: ExperimentConfig, force: set[str], only: str | None, suffix: str,
                processes: fanout.JobProcesses | None) -> Runs:
    store = Store(str(exp.store_path))
    runs = Runs()
    run = runner(exp, force, suffix)
    examples = {ds.label: run("ingest", ds.label, index=i) for i, ds in enumerate(exp.datasets)}
    if only == "ingest":
        runs.prepared = list(examples.values())
        return runs
    splits = {name: set(store.get(*ref).table("examples").column("split").to_pylist())
              for name, ref in examples.items()}
    has_train = {name: "train" in s for name, s in splits.items()}
    if only in PREP:
        runs.prepared = [_prep_only(run, exp, only, name, ref) for name, ref in examples.items() if has_train[name]]
        return runs
    for name, ref in examples.items():
        if exp.signals.enabled and _trained(exp, name, has_train[name]):  # before the first training
            runs.signals.append(_signals(run, exp, name, ref))

    def phase(jobs: list[dict]) -> list:
        """Run `jobs` (fanned out when `parallel`/`pool` say so) and return each one's artifacts, in order."""
        for job in jobs:  # shared inputs are built once, here, before any job starts
            if "method" in job:
                _method_contexts(run, exp.run_config(job["method"], job["seed"], job.get("point")), job["dataset"],
                                 examples[job["dataset"]])
        fanned = fanout.dispatch(exp, examples, jobs, force, suffix, processes)
        collect = runner(exp, force - JOB_STAGES, suffix) if fanned else run
        return [execute_job(collect, exp, examples, job) for job in jobs]

    chosen: dict = {}
    if exp.calibrate.enabled:  # on the validation split, before anything reads test
        cjobs = calibration.jobs(exp, splits)
        cal, chosen = calibration.calibrate(run, store, exp, list(zip(cjobs, phase(cjobs), strict=True)))
        if cal is not None:
            runs.calibration.append(cal)
    if not (exp.calibrate.enabled and exp.calibrate.only):
        for job, (ckpt, evaluated) in zip(jobs := _final_jobs(exp, examples, has_train, chosen), phase(jobs),
                                          strict=True):
            if ckpt is not None:
                runs.trainings.append((job["method"], job["seed"], ckpt))
            for ev, an in evaluated:
                runs.add(ev, an)
    if exp.analyze.enabled and (runs.evaluations or runs.calibration):
        inputs = runs.inputs()
        cmp = run("compare", exp.name, inputs=inputs) if runs.analyses else None
        if cmp is not None:
            inputs["compare"] = cmp
        train_inputs = {f"train_{i}": ckpt for i, (_, _, ckpt) in enumerate(runs.trainings)}
        train_inputs |= {f"signals_{i}": ref for i, ref in enumerate(runs.signals)}
        train_inputs |= {f"calibrate_{i}": ref for i, ref in enumerate(runs.calibration)}
        report = run("report", exp.name, runs=[[m, s] for m, s, _ in runs.trainings],
                     inputs={**inputs, **train_inputs})
        runs.reports.append((exp.model.label, report))
    return runs


def _final_jobs(exp: ExperimentConfig, examples: dict, has_train: dict[str, bool], chosen: dict) -> list[dict]:
    """The final runs as jobs, in report order: the base model on every dataset, then per dataset every
    method × seed at its chosen calibration point (if any)."""
    jobs: list[dict] = []
    if "base" in exp.methods:
        jobs += [{"kind": "base", "dataset": name} for name in examples]
    for name in examples:
        for method in (m for m in exp.methods if m != "base"):
            tcfg = exp.method_config(method)
            if not has_train[name] or (tcfg.datasets and name not in tcfg.datasets):
                continue
            jobs += [{"kind": "final", "dataset": name, "method": method, "seed": seed,
                      "point": chosen.get((name, method))} for seed in exp.seed_list]
    return jobs


def execute_job(run: Callable, exp: ExperimentConfig, examples: dict, job: dict):
    """One job's chain of stages through ``run``. Returns the validation evaluate ref (calibration jobs) or
    (checkpoint ref or None, [(evaluate ref, analyze ref or None), ...]) (final jobs)."""
    name, kind = job["dataset"], job["kind"]
    train = lambda *args: _train(run, exp, *args)  # noqa: E731
    if kind == "validate_base":
        return calibration.validate_base(run, exp, name, examples[name])
    if kind == "validate":
        return calibration.validate(run, exp, train, name, examples[name], job["method"], job["seed"], job["point"])
    analyze = exp.analyze.enabled and any(m != "base" for m in exp.methods)  # retention describes trained models
    if kind == "base":
        ev = run("evaluate", f"base-{name}", method="base", inputs={"examples": examples[name]})
        an = run("analyze", f"base-{name}", method="base",
                 inputs={"examples": examples[name], "evaluate": ev}) if analyze else None
        return None, [(ev, an)]
    method, seed, point = job["method"], job["seed"], job.get("point")
    ckpt = train(exp.run_config(method, seed, point), method, seed, name, examples[name], point)
    out = []
    for target in [name] + [p.evaluate for p in exp.transfer if p.train == name]:
        label = f"{method}-s{seed}-{name}" + (f"-on-{target}" if target != name else "")
        tag = {"method": method, "seed": seed, "trained_on": name}
        ev = run("evaluate", label, **tag, inputs={"examples": examples[target], "checkpoint": ckpt})
        an = run("analyze", label, **tag, inputs={"examples": examples[target], "evaluate": ev,
                                                  "checkpoint": ckpt}) if analyze else None
        out.append((ev, an))
    return ckpt, out


class Runs:
    """(stage, key) refs of an experiment's artifacts, collected for compare and the report."""

    def __init__(self) -> None:
        self.evaluations: list = []
        self.analyses: list = []
        self.trainings: list = []
        self.reports: list = []
        """(model label, report ref), one per model."""
        self.prepared: list = []
        """Preprocessing artifacts of a single-stage run (`only`)."""
        self.signals: list = []
        self.calibration: list = []
        """The calibrate artifact (validation scores per method × grid point, the chosen points)."""
        """Signal diagnostics, one per trained dataset."""

    def merge(self, other: Runs) -> None:
        for name in ("evaluations", "analyses", "trainings", "reports", "prepared", "signals", "calibration"):
            getattr(self, name).extend(getattr(other, name))

    def add(self, evaluation, analysis) -> None:
        self.evaluations.append(evaluation)
        if analysis is not None:
            self.analyses.append(analysis)

    def inputs(self) -> dict:
        return {**{f"evaluate_{i}": ev for i, ev in enumerate(self.evaluations)},
                **{f"analyze_{i}": an for i, an in enumerate(self.analyses)}}


def _view_sources(run, name: str, examples, strategy: str, num_views: int) -> dict:
    """The neighbors / instructions artifact the auxiliary views of `strategy` are built from (if any)."""
    need = {"retrieval": ("retrieval", "neighbors"), "induction": ("induction", "instructions")}
    if strategy not in need or num_views == 0:
        return {}
    stage, table = need[strategy]
    return {table: run(stage, name, inputs={"examples": examples})}


def _trained(exp: ExperimentConfig, name: str, has_train: bool) -> bool:
    """Whether some method of the experiment trains on dataset `name`."""
    return has_train and any(not (cfg := exp.method_config(m)).datasets or name in cfg.datasets
                             for m in exp.methods if m != "base")


def _signals(run, exp: ExperimentConfig, name: str, examples):
    """The signals of one dataset, on the auxiliary views of the first method with agreement over K >= 2
    views (that method's contexts), else on `signals.num_views` random-donor views."""
    for method in (m for m in exp.methods if m != "base"):
        tcfg = exp.method_config(method)
        if tcfg.agreement.level != "none" and tcfg.agreement.num_views >= 2:
            ctx, _ = _method_contexts(run, tcfg, name, examples)  # the very views that method trains with
            break
    else:
        k = exp.signals.num_views
        ctx = run("contexts", f"random-{name}", strategy="random", num_views=k, inputs={"examples": examples})
    return run("signals", name, inputs={"examples": examples, "contexts": ctx})


def _prep_only(run, exp: ExperimentConfig, stage: str, name: str, examples):
    if stage == "signals":
        return _signals(run, exp, name, examples)
    if stage != "contexts":
        return run(stage, name, inputs={"examples": examples})
    extra = _view_sources(run, name, examples, exp.contexts.strategy, exp.contexts.num_views)
    extra["negatives"] = run("negatives", name, inputs={"examples": examples})
    return run("contexts", f"{exp.contexts.strategy}-{name}", strategy=exp.contexts.strategy,
               num_views=exp.contexts.num_views, inputs={"examples": examples, **extra})


def _method_contexts(run, tcfg, name: str, examples) -> tuple:
    """The contexts artifact a method trains with, and the artifacts it was built from (negatives, ...)."""
    agree = tcfg.agreement.level != "none"
    extra = {}
    if tcfg.contrastive.weight > 0:
        extra["negatives"] = run("negatives", name, inputs={"examples": examples})
    if agree:
        extra |= _view_sources(run, name, examples, tcfg.agreement.strategy, tcfg.agreement.num_views)
    ctx = run("contexts", f"{tcfg.agreement.strategy if agree else 'privileged'}-{name}",
              strategy=tcfg.agreement.strategy, num_views=tcfg.agreement.num_views if agree else 0,
              inputs={"examples": examples, **extra})
    return ctx, extra


def _train(run, exp: ExperimentConfig, tcfg, method: str, seed: int, name: str, examples, point: dict | None = None):
    """Submit one training; ``point`` is a calibration grid point laid over the method's config."""
    ctx, extra = _method_contexts(run, tcfg, name, examples)
    inputs = {"examples": examples, "contexts": ctx}
    if "negatives" in extra:
        inputs["negatives"] = extra["negatives"]
    label = f"{method}-s{seed}-{name}" + (f"-{point_label(point)}" if point else "")
    return run("train", label, method=method, seed=seed, dataset=name, point=point or None, inputs=inputs)


def _publish(exp: ExperimentConfig, runs: Runs) -> str:
    """The Markdown results (Table 1 with CIs over seeds, retention) as a Prefect artifact, per model."""
    from stages.report import report_markdown

    store = Store(exp.store_path)
    scores = [store.get(*ref).table("scores") for ref in runs.evaluations]  # each table holds one model
    predictions = [store.get(*ref).table("predictions") for ref in runs.evaluations]
    retention = [store.get(*ref).table("retention") for ref in runs.analyses]

    def of_model(tables: list[pa.Table], label: str) -> list[pa.Table]:
        return [t for t in tables if label in t.column("model").to_pylist()]

    parts = []
    for model in exp.model_list:
        model_scores, model_retention = of_model(scores, model.label), of_model(retention, model.label)
        title = f"UniSD — {exp.name}" + (f" — {model.label}" if exp.models else "")
        parts.append(report_markdown(title, model_scores, confidence=exp.analyze.confidence,
                                     retention=pa.concat_tables(model_retention) if model_retention else None,
                                     predictions=of_model(predictions, model.label)))
    md = "\n".join(parts)
    for label, ref in runs.reports:
        md += f"\nReport ({label}): {store.get(*ref).path / 'files' / 'report.html'}\n"
    try:
        create_markdown_artifact(markdown=md, key="unisd-results", description=f"results of {exp.name}")
    except Exception as e:  # an artifact is a convenience; never fail the run for it
        logging.getLogger(__name__).warning("could not create the Prefect artifact: %s", e)
    return md


@flow(name="unisd")
def unisd(preset: str = "default", config_path: str | None = None, overrides: list[str] | None = None,
          force: bool = False) -> str:
    """Run every stage of an experiment; finished stages are served from the store."""
    exp = _config(preset, config_path, overrides)
    runs = run_experiment(exp, set(STAGES) if force else set())
    get_run_logger().info("store: %s", exp.store_path)
    return _publish(exp, runs)


def write_report(exp: ExperimentConfig, out: Path, *, force: bool = False) -> Path:
    """Run the experiment (finished stages come from the store) and copy its report to `out`."""
    import shutil

    if not exp.analyze.enabled:
        raise ValueError("analyze.enabled is false: the experiment has no report")
    runs = unisd_runs(exp, force)
    if not runs.reports:
        raise ValueError(f"experiment {exp.name!r} evaluated nothing, so there is nothing to report")
    store = Store(exp.store_path)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for label, ref in runs.reports:  # one model: the report itself; several: one folder per model
        shutil.copytree(store.get(*ref).path / "files", tmp if len(runs.reports) == 1 else tmp / label)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out.resolve()


@flow(name="unisd-report")
def unisd_runs(exp: ExperimentConfig, force: bool = False) -> Runs:
    """The experiment's runs, computing whatever the store lacks (the report among them)."""
    return run_experiment(exp, {"report"} if force else set())


def _stage_flow(stage: str):
    @flow(name=f"stage-{stage}")
    def stage_flow(preset: str = "default", config_path: str | None = None,
                   overrides: list[str] | None = None, force: bool = True) -> str:
        exp = _config(preset, config_path, overrides)
        runs = run_experiment(exp, {stage} if force else set(), only=stage if stage in ("ingest", *PREP) else None)
        return "\n".join(ref[1] for ref in runs.prepared) if runs.prepared else _publish(exp, runs)

    stage_flow.__doc__ = f"Recompute the {stage} stage (force=True); everything else comes from the store."
    return stage_flow


STAGE_FLOWS = {s: _stage_flow(s) for s in STAGES}


def serve_all(preset: str = "default") -> None:
    """Serve `unisd/full` and `stage-<name>/default` to the Prefect server in PREFECT_API_URL."""
    from prefect import serve

    deployments = [unisd.to_deployment(name="full", parameters={"preset": preset})]
    deployments += [f.to_deployment(name="default", parameters={"preset": preset}) for f in STAGE_FLOWS.values()]
    serve(*deployments)

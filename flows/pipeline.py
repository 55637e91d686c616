"""Prefect wiring: the `unisd` flow (deployment `full`) and one flow per stage.

Only this package imports Prefect. Each stage is a task whose real cache is the artifact key in our
store (Prefect's own result cache is off: it cannot hold Parquet tables and its source-hash keys break
on refactors), so a rerun skips finished stages and a changed config reruns only what depends on it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the in-process (ephemeral) API server can need more than Prefect's default 20 s on a loaded laptop
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from stages import pipeline  # noqa: E402
from storage import Store  # noqa: E402
from unisd.config import ExperimentConfig, load_experiment  # noqa: E402
from unisd.report import scores_markdown  # noqa: E402

STAGES = ("ingest", "negatives", "retrieval", "induction", "contexts", "train", "evaluate")


def _config(preset: str | None, config_path: str | None, overrides: list[str] | None) -> ExperimentConfig:
    return load_experiment(preset=None if config_path else (preset or "default"), config=config_path,
                           overrides=overrides or [])


@task(name="stage", cache_policy=NO_CACHE, task_run_name="{stage}-{label}")
def stage_task(stage: str, label: str, store_root: str, exp: ExperimentConfig, args: dict, force: bool) -> str:
    """Materialise one artifact; ``args`` names its input artifacts by (stage, key) and its settings."""
    store = Store(store_root)
    arts = {name: store.get(*ref) for name, ref in args.get("inputs", {}).items()}
    if stage == "ingest":
        art = pipeline.ingest(store, exp.datasets[args["index"]], force=force)
    elif stage == "negatives":
        art = pipeline.negatives(store, exp.negatives, arts["examples"], force=force)
    elif stage == "retrieval":
        art = pipeline.retrieval(store, exp.retrieval, arts["examples"], force=force)
    elif stage == "induction":
        art = pipeline.induction(store, exp.induction, arts["examples"], force=force)
    elif stage == "contexts":
        cfg = replace(exp.contexts, strategy=args["strategy"], num_views=args["num_views"])
        extra = {k: v for k, v in arts.items() if k != "examples"}
        art = pipeline.contexts(store, cfg, arts["examples"], extra, force=force)
    elif stage == "train":
        art = pipeline.train(store, exp.method_config(args["method"]), exp.model, arts["examples"],
                             arts["contexts"], arts.get("negatives"), args["method"], force=force)
    else:
        art = pipeline.evaluate(store, exp.model, exp.evaluate, arts["examples"], method=args["method"],
                                checkpoint=arts.get("checkpoint"), force=force)
    get_run_logger().info("%s %s: %s", stage, label, art.key[:12])
    return art.key


PREP = ("negatives", "retrieval", "induction", "contexts")


def run_experiment(exp: ExperimentConfig, force: set[str] = frozenset(), only: str | None = None) -> list[str]:
    """Submit every stage the experiment needs, in dependency order; returns the evaluate artifact keys.

    ``only`` names a preprocessing stage (or ingest) to run on every dataset with a train split,
    whether or not a method needs it; the keys of those artifacts are returned instead."""
    root = str(exp.store_path)
    store = Store(root)
    evals: list[str] = []

    def run(stage: str, label: str, **args) -> tuple[str, str]:
        return stage, stage_task(stage, label, root, exp, args, stage in force)

    for i, ds in enumerate(exp.datasets):
        name = ds.label
        examples = run("ingest", name, index=i)
        if only == "ingest":
            evals.append(examples[1])
            continue
        if only in PREP:
            if "train" in store.get(*examples).table("examples").column("split").to_pylist():
                evals.append(_prep_only(run, exp, only, name, examples)[1])
            continue
        if "base" in exp.methods:
            evals.append(run("evaluate", f"base-{name}", method="base", inputs={"examples": examples})[1])
        has_train = "train" in store.get(*examples).table("examples").column("split").to_pylist()
        for method in (m for m in exp.methods if m != "base"):
            tcfg = exp.method_config(method)
            if not has_train or (tcfg.datasets and name not in tcfg.datasets):
                continue
            evals.append(_train_and_evaluate(run, exp, tcfg, method, name, examples))
    return evals


def _prep_only(run, exp: ExperimentConfig, stage: str, name: str, examples):
    if stage != "contexts":
        return run(stage, name, inputs={"examples": examples})
    extra = {}
    need = {"retrieval": ("retrieval", "neighbors"), "induction": ("induction", "instructions")}
    if exp.contexts.strategy in need and exp.contexts.num_views > 0:
        st, table = need[exp.contexts.strategy]
        extra[table] = run(st, name, inputs={"examples": examples})
    extra["negatives"] = run("negatives", name, inputs={"examples": examples})
    return run("contexts", f"{exp.contexts.strategy}-{name}", strategy=exp.contexts.strategy,
               num_views=exp.contexts.num_views, inputs={"examples": examples, **extra})


def _train_and_evaluate(run, exp: ExperimentConfig, tcfg, method: str, name: str, examples) -> str:
    agree = tcfg.agreement.level != "none"
    extra = {}
    if tcfg.contrastive.weight > 0:
        extra["negatives"] = run("negatives", name, inputs={"examples": examples})
    if agree and tcfg.agreement.strategy == "retrieval":
        extra["neighbors"] = run("retrieval", name, inputs={"examples": examples})
    if agree and tcfg.agreement.strategy == "induction":
        extra["instructions"] = run("induction", name, inputs={"examples": examples})
    ctx = run("contexts", f"{tcfg.agreement.strategy if agree else 'privileged'}-{name}",
              strategy=tcfg.agreement.strategy, num_views=tcfg.agreement.num_views if agree else 0,
              inputs={"examples": examples, **extra})
    inputs = {"examples": examples, "contexts": ctx}
    if "negatives" in extra:
        inputs["negatives"] = extra["negatives"]
    ckpt = run("train", f"{method}-{name}", method=method, inputs=inputs)
    return run("evaluate", f"{method}-{name}", method=method, inputs={"examples": examples, "checkpoint": ckpt})[1]


def _publish(exp: ExperimentConfig, eval_keys: list[str]) -> str:
    store = Store(exp.store_path)
    tables = [store.get("evaluate", k).table("scores") for k in eval_keys]
    md = scores_markdown(tables, title=f"UniSD scores — {exp.name}")
    try:
        create_markdown_artifact(markdown=md, key="unisd-scores", description=f"scores of {exp.name}")
    except Exception as e:  # an artifact is a convenience; never fail the run for it
        logging.getLogger(__name__).warning("could not create the Prefect artifact: %s", e)
    return md


@flow(name="unisd")
def unisd(preset: str = "default", config_path: str | None = None, overrides: list[str] | None = None,
          force: bool = False) -> str:
    """Run every stage of an experiment; finished stages are served from the store."""
    exp = _config(preset, config_path, overrides)
    keys = run_experiment(exp, set(STAGES) if force else set())
    get_run_logger().info("store: %s", exp.store_path)
    return _publish(exp, keys)


def _stage_flow(stage: str):
    @flow(name=f"stage-{stage}")
    def stage_flow(preset: str = "default", config_path: str | None = None,
                   overrides: list[str] | None = None, force: bool = True) -> str:
        exp = _config(preset, config_path, overrides)
        keys = run_experiment(exp, {stage} if force else set(), only=stage if stage in ("ingest", *PREP) else None)
        return _publish(exp, keys) if stage in ("train", "evaluate") else "\n".join(keys)

    stage_flow.__doc__ = f"Recompute the {stage} stage (force=True); everything else comes from the store."
    return stage_flow


STAGE_FLOWS = {s: _stage_flow(s) for s in STAGES}


def serve_all(preset: str = "default") -> None:
    """Serve `unisd/full` and `stage-<name>/default` to the Prefect server in PREFECT_API_URL."""
    from prefect import serve

    deployments = [unisd.to_deployment(name="full", parameters={"preset": preset})]
    deployments += [f.to_deployment(name="default", parameters={"preset": preset}) for f in STAGE_FLOWS.values()]
    serve(*deployments)

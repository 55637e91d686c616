"""Prefect wiring: the `unisd` flow (deployment `full`) and one flow per stage.

Only this package imports Prefect. Each stage is a task whose real cache is the artifact key in our
store (Prefect's own result cache is off: it cannot hold Parquet tables and its source-hash keys break
on refactors), so a rerun skips finished stages and a changed config reruns only what depends on it.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from stages import pipeline  # noqa: E402
from storage import Store  # noqa: E402
from unisd.config import ExperimentConfig, load_experiment  # noqa: E402
from unisd.report import scores_markdown  # noqa: E402


def _config(preset: str | None, config_path: str | None, overrides: list[str] | None) -> ExperimentConfig:
    return load_experiment(preset=None if config_path else (preset or "default"), config=config_path,
                           overrides=overrides or [])


@task(name="ingest", cache_policy=NO_CACHE, task_run_name="ingest-{dataset}")
def ingest_task(store_root: str, exp: ExperimentConfig, index: int, dataset: str, force: bool = False) -> str:
    art = pipeline.ingest(Store(store_root), exp.datasets[index], force=force)
    get_run_logger().info("examples for %s: %s (%s rows)", dataset, art.key[:12], art.manifest["rows"])
    return art.key


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="evaluate-{method}-{dataset}")
def evaluate_task(store_root: str, exp: ExperimentConfig, examples_key: str, dataset: str,
                  method: str = "base", force: bool = False) -> str:
    store = Store(store_root)
    examples = store.get("ingest", examples_key)
    art = pipeline.evaluate(store, exp.model, exp.evaluate, examples, method=method, force=force)
    get_run_logger().info("scores for %s/%s: %s", method, dataset, art.key[:12])
    return art.key


def _run_all(exp: ExperimentConfig, force: bool, stages: set[str]) -> list[str]:
    store_root = str(exp.store_path)
    names = [d.dataset for d in exp.datasets]
    ex_keys = [ingest_task(store_root, exp, i, names[i], force=force and "ingest" in stages)
               for i in range(len(exp.datasets))]
    if "evaluate" not in stages:
        return ex_keys
    eval_keys = []
    for key, name in zip(ex_keys, names):
        for method in exp.methods:
            eval_keys.append(evaluate_task(store_root, exp, key, name, method,
                                           force=force and "evaluate" in stages))
    return eval_keys


def _publish(exp: ExperimentConfig, eval_keys: list[str]) -> str:
    store = Store(exp.store_path)
    tables = [store.get("evaluate", k).table("scores") for k in eval_keys]
    md = scores_markdown(tables, title=f"UniSD scores — {exp.name}")
    try:
        create_markdown_artifact(markdown=md, key="unisd-scores", description=f"scores of {exp.name}")
    except Exception as e:  # an artifact is a convenience; never fail the run for it
        logging.getLogger(__name__).warning("could not create the Prefect artifact: %s", e)
    return md


@flow(name="unisd", log_prints=True)
def unisd(preset: str = "default", config_path: str | None = None, overrides: list[str] | None = None,
          force: bool = False) -> str:
    """Run every stage of an experiment; finished stages are served from the store."""
    exp = _config(preset, config_path, overrides)
    keys = _run_all(exp, force, {"ingest", "evaluate"})
    md = _publish(exp, keys)
    get_run_logger().info("store: %s", exp.store_path)
    return md


@flow(name="stage-ingest")
def stage_ingest(preset: str = "default", config_path: str | None = None,
                 overrides: list[str] | None = None, force: bool = True) -> list[str]:
    """Rerun only the ingest stage (recomputed when force=True)."""
    return _run_all(_config(preset, config_path, overrides), force, {"ingest"})


@flow(name="stage-evaluate")
def stage_evaluate(preset: str = "default", config_path: str | None = None,
                   overrides: list[str] | None = None, force: bool = True) -> str:
    """Rerun only the evaluate stage (its inputs come from the store when present)."""
    exp = _config(preset, config_path, overrides)
    keys = _run_all(exp, False, {"ingest"})
    store_root = str(exp.store_path)
    out = [evaluate_task(store_root, exp, k, d.dataset, m, force=force)
           for k, d in zip(keys, exp.datasets) for m in exp.methods]
    return _publish(exp, out)


STAGE_FLOWS = {"ingest": stage_ingest, "evaluate": stage_evaluate}


def serve_all(preset: str = "default") -> None:
    """Serve `unisd/full` and `stage-<name>/default` to the Prefect server in PREFECT_API_URL."""
    from prefect import serve

    deployments = [unisd.to_deployment(name="full", parameters={"preset": preset})]
    deployments += [f.to_deployment(name="default", parameters={"preset": preset}) for f in STAGE_FLOWS.values()]
    serve(*deployments)

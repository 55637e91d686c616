"""Fan-out of an experiment's independent jobs over Prefect: local job processes or a work pool.

A job is one chain of stages that shares nothing with the others once the shared artifacts exist: a
(method, seed, dataset) training with its evaluations and analyses, a base evaluation, a calibration
training with its validation scoring (`flows.pipeline.execute_job`). The flow builds the shared artifacts,
`dispatch`es the jobs, then walks the same chains again in its own process: every stage is then a cache
hit in the store, so the artifact keys, the order of the report and the results are exactly those of a
sequential run, whatever ran where. A job that fails or whose worker dies leaves only its partial dir
behind (the store publishes an artifact atomically under its key's lock); a rerun resumes it.

- `parallel: N` (no pool): a `ProcessPoolTaskRunner` of N spawned processes; each claims a slot, takes
  `threads` / N CPU threads and, with `devices`, sets its own `CUDA_VISIBLE_DEVICES`.
- `pool: NAME`: each job is a flow run of deployment `unisd-job/NAME` (`deploy`), created with
  `run_deployment` and picked up by that work pool's workers, at most `parallel` in flight (the pool's
  own concurrency limit, `unisd deploy --limit`, also applies). Workers pin their own device and threads
  through their environment (`CUDA_VISIBLE_DEVICES`, `UNISD_THREADS`).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from unisd.config import ExperimentConfig
from unisd.configtools import build, to_dict

log = logging.getLogger(__name__)
JOB_FLOW = "unisd-job"
ROOT = Path(__file__).resolve().parent.parent
_slot_handle = None  # the open slot file of this job process (its lock lives as long as the process)


def label(job: dict) -> str:
    """A job's run name: kind, method, seed, dataset and calibration point."""
    from stages.calibrate import point_label

    parts = [job["kind"], job.get("method"), f"s{job['seed']}" if job.get("seed") is not None else None,
             job["dataset"], point_label(job["point"]) if job.get("point") else None]
    return "-".join(p for p in parts if p)


def dispatch(exp: ExperimentConfig, examples: dict, jobs: list[dict], force: set[str] | frozenset[str],
             suffix: str, processes: JobProcesses | None = None) -> bool:
    """Run `jobs` concurrently when `parallel` > 1 or `pool` is set; False (nothing done) otherwise, and
    then the flow runs every chain itself, exactly as a sequential run. ``processes``: the local job
    processes (`job_processes`), needed when `parallel` > 1 without a pool. Raises after all jobs ended
    if any failed, naming them."""
    if not jobs or (exp.parallel == 1 and exp.pool is None):
        return False
    args = {"examples": {k: list(v) for k, v in examples.items()}, "force": sorted(force), "suffix": suffix}
    if exp.pool is not None:
        _via_pool(exp, jobs, args)
    elif processes is None:
        raise ValueError("parallel > 1 without a pool needs the flow's job processes (fanout.job_processes)")
    else:
        processes.run(jobs, args)
    return True


def _job_experiment(exp: ExperimentConfig, threads: int | None) -> dict:
    """The experiment as a job receives it: plain data, the store as an absolute path, no further fan-out."""
    return to_dict(replace(exp, store=str(exp.store_path), parallel=1, pool=None, devices=(), threads=threads))


def _execute(experiment: dict, examples: dict, job: dict, force: list[str], suffix: str) -> str:
    from flows.pipeline import execute_job, runner

    exp = build(ExperimentConfig, experiment)
    execute_job(runner(exp, set(force), suffix), exp, {k: tuple(v) for k, v in examples.items()}, job)
    return label(job)


@task(name="job", cache_policy=NO_CACHE, task_run_name="job-{job[kind]}-{job[dataset]}")
def job_task(experiment: dict, examples: dict, job: dict, force: list[str], suffix: str) -> str:
    """One job in a local job process (`parallel` > 1)."""
    return _execute(experiment, examples, job, force, suffix)


@flow(name=JOB_FLOW)
def unisd_job(experiment: dict, examples: dict, job: dict, force: list[str], suffix: str = "") -> str:
    """One job of an experiment, run by a work pool's worker (`pool`); its artifacts land in the store."""
    return _execute(experiment, examples, job, force, suffix)


def _claim_slot(slot_dir: str, devices: tuple[str, ...], threads: int) -> None:
    """Process-pool initializer: take the first free slot (a lock held until this process exits) and pin
    the process to that slot's device and to its share of the threads, before torch loads."""
    global _slot_handle
    for slot in range(1 << 16):
        handle = open(Path(slot_dir) / f"slot-{slot}", "w")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _slot_handle = handle
        break
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
    for var in ("UNISD_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


class JobProcesses:
    """The local job processes of one experiment (`parallel` > 1, no pool), started when the flow starts
    so that their imports (about 8 s: torch, transformers, the stages) overlap the shared stages."""

    def __init__(self, exp: ExperimentConfig, runner, threads: int) -> None:
        self.exp, self.runner, self.threads = exp, runner, threads
        self.experiment = _job_experiment(exp, threads)
        self.warming = [runner.submit(warm_task, {}) for _ in range(exp.parallel)]  # one per process

    def run(self, jobs: list[dict], args: dict) -> None:
        log.info("fan-out: %d jobs over %d processes, %d thread(s) each%s", len(jobs), self.exp.parallel,
                 self.threads, f", devices {list(self.exp.devices)}" if self.exp.devices else "")
        futures = [self.runner.submit(job_task, {"experiment": self.experiment, "job": job, **args})
                   for job in jobs]
        _raise_failures(jobs, [_outcome(f.result) for f in futures])


@task(name="job-process", cache_policy=NO_CACHE)
def warm_task() -> int:
    """Nothing but the import of the job process itself (done by the time this runs); its pid."""
    return os.getpid()


@contextlib.contextmanager
def job_processes(exp: ExperimentConfig):
    """`JobProcesses` for the experiment's fan-out, or None when jobs run in the flow or on a pool."""
    if exp.parallel == 1 or exp.pool is not None:
        yield None
        return
    from prefect.task_runners import ProcessPoolTaskRunner

    from engines.threads import resolve_threads

    threads = max(1, resolve_threads(exp.threads) // exp.parallel)
    with _api_for_children(), tempfile.TemporaryDirectory(prefix="unisd-slots-") as slots, \
            ProcessPoolTaskRunner(max_workers=exp.parallel, initializer=_claim_slot,
                                  initargs=(slots, tuple(exp.devices), threads)) as runner:
        yield JobProcesses(exp, runner, threads)


@contextlib.contextmanager
def _api_for_children():
    """Point the job processes at this flow's API server. Under `unisd run` that is Prefect's temporary
    server, which the children would not find by themselves: each would start one of its own (about
    10 s apiece, and their task runs would be invisible to this flow run)."""
    from prefect.client.orchestration import get_client

    saved = os.environ.get("PREFECT_API_URL")
    if saved is None:
        with get_client(sync_client=True) as client:
            os.environ["PREFECT_API_URL"] = str(client.api_url)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)


def _via_pool(exp: ExperimentConfig, jobs: list[dict], args: dict) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ValueError(f"pool: {exp.pool!r} needs a Prefect server: set PREFECT_API_URL "
                         "(e.g. http://127.0.0.1:4200/api after `prefect server start`)")
    experiment = _job_experiment(exp, exp.threads)
    name = f"{JOB_FLOW}/{exp.pool}"

    def one(job: dict) -> None:
        run = run_deployment(name, parameters={"experiment": experiment, "job": job, **args}, timeout=None,
                             poll_interval=2, flow_run_name=f"{label(job)}{args['suffix']}")
        if run.state is None or not run.state.is_completed():
            state = run.state.type.value if run.state is not None else "unknown"
            raise RuntimeError(f"flow run {run.name} ended {state}"
                               + (f": {run.state.message}" if run.state is not None and run.state.message else ""))

    log.info("fan-out: %d jobs to work pool %r, at most %d in flight", len(jobs), exp.pool, exp.parallel)
    with ThreadPoolExecutor(max_workers=min(exp.parallel, len(jobs))) as ex:  # each thread waits on one run
        futures = [ex.submit(contextvars.copy_context().run, _outcome, one, job) for job in jobs]
        _raise_failures(jobs, [f.result() for f in futures])


def _outcome(call, *args) -> str | None:
    """None when `call(*args)` succeeds, else its failure as one line."""
    try:
        call(*args)
    except Exception as e:  # noqa: BLE001 (a failed job must not stop the others: collect, raise at the end)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _raise_failures(jobs: list[dict], outcomes: list[str | None]) -> None:
    failed = [f"{label(job)} ({why})" for job, why in zip(jobs, outcomes, strict=True) if why is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} jobs failed: " + "; ".join(failed)
                           + " (finished jobs are in the store; rerun to resume the rest)")


def deploy(pool: str, limit: int | None = None) -> str:
    """Register deployment `unisd-job/<pool>` on work pool `pool` (a `process` pool, created if missing;
    `limit` sets its concurrency limit). Workers: `prefect worker start --pool <pool>`."""
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        if limit is not None:
            client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))
    job_flow = Flow.from_source(source=str(ROOT), entrypoint="flows.fanout.unisd_job")
    job_flow.deploy(name=pool, work_pool_name=pool, print_next_steps=False, ignore_warnings=True)
    return f"{JOB_FLOW}/{pool}"

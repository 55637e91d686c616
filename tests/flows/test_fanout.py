"""Fan-out of independent jobs, for real: local job processes (`parallel: 2`) and a Prefect `process` work
pool with two workers on a local server, each compared with the sequential run of the same smoke sweep
(same artifact keys, same scores, predictions and retention), and a worker killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from multiprocessing import get_context
from pathlib import Path

import pytest

from flows import fanout
from unisd.config import load_experiment

UNISD = str(Path(sys.executable).parent / "unisd")
PREFECT = str(Path(sys.executable).parent / "prefect")
SWEEP = ["--preset", "smoke_sweep", "seeds=[0]"]  # 8 jobs: base × 2 datasets, 3 methods × 2 datasets
TABLES = {"scores": "*", "predictions": "* exclude (latency)", "retention": "*"}
"""Every column but wall-clock times."""


def _env(tmp: Path, store: Path, **extra) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), UNISD_STORE=str(store),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    env.pop("PREFECT_API_URL", None)
    return env | extra


def _unisd(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([UNISD, *args], check=False, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def _keys(store: Path) -> set[str]:
    """Every finished artifact as stage/key; and no work dir (partial, tmp, quarantine) left behind."""
    work = [p for p in store.glob("*/.*") if not p.name.startswith(".lock-")]
    assert not work, f"work dirs left in the store: {work}"
    return {f"{p.parent.name}/{p.name}" for p in store.glob("*/*") if p.is_dir() and not p.name.startswith(".")}


def _rows(env: dict, store: Path) -> dict[str, str]:
    return {t: _unisd(env, "sql", f"select {cols} from {t} order by all", "--store", str(store),
                      "--format", "csv").stdout for t, cols in TABLES.items()}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, tiny_model_dir):
    """The smoke sweep run one job after another (`parallel: 1`, today's path): keys and result rows."""
    tmp = tmp_path_factory.mktemp("sequential")
    store = tmp / "store"
    env = _env(tmp, store)
    _unisd(env, "run", *SWEEP)
    return _keys(store), _rows(env, store)


def test_job_labels_and_config_checks():
    assert fanout.label({"kind": "final", "dataset": "math", "method": "sd", "seed": 1,
                         "point": {"lr": 0.001}}) == "final-sd-s1-math-lr=0.001"
    assert fanout.label({"kind": "base", "dataset": "medmcqa"}) == "base-medmcqa"
    with pytest.raises(ValueError, match="parallel: must be >= 1"):
        load_experiment("smoke_sweep", overrides=["parallel=0"])
    with pytest.raises(ValueError, match=r"devices: 1 device\(s\) for parallel: 2"):
        load_experiment("smoke_sweep", overrides=["parallel=2", "devices=[0]"])
    with pytest.raises(ValueError, match="pool: empty work pool name"):
        load_experiment("smoke_sweep", overrides=["pool=' '"])


def _slot_env(barrier) -> tuple[str, str]:
    barrier.wait(30)  # both tasks run at once, so each runs in its own process
    return os.environ["CUDA_VISIBLE_DEVICES"], os.environ["UNISD_THREADS"]


def test_each_job_process_claims_its_own_device_slot(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    ctx = get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(2, mp_context=ctx, initializer=fanout._claim_slot,
                                                       initargs=(str(tmp_path), ("0", "1"), 3)) as ex:
        barrier = manager.Barrier(2)
        got = sorted(f.result(60) for f in [ex.submit(_slot_env, barrier) for _ in range(2)])
    assert got == [("0", "3"), ("1", "3")]


@pytest.mark.integration
def test_parallel_job_processes_equal_the_sequential_run(tmp_path, sequential):
    store = tmp_path / "store"
    env = _env(tmp_path, store)
    res = _unisd(env, "run", *SWEEP, "parallel=2")
    assert "fan-out: 8 jobs over 2 processes, 1 thread(s) each" in res.stdout + res.stderr
    keys, rows = sequential
    assert _keys(store) == keys
    assert _rows(env, store) == rows


# ---- a real work pool: Prefect server, `unisd deploy`, two `process` workers ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, what: str, timeout: float, procs=()) -> None:
    deadline = time.time() + timeout
    while not cond():
        for p in procs:
            assert p.poll() is None, f"{what}: a process exited with {p.returncode}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _tree(proc: subprocess.Popen) -> list[int]:
    """A process and everything it started (a worker's flow runs), parents first."""
    pids = [proc.pid]
    for pid in pids:  # grows while walked: children, grandchildren, ...
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], check=False, capture_output=True,
                             text=True).stdout
        pids += [int(p) for p in out.split()]
    return pids


def _training_key(proc: subprocess.Popen) -> str | None:
    """The train key whose store lock a process of `proc`'s tree holds open (it is mid-training), if any."""
    for pid in _tree(proc):
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if "/train/.lock-" in link:
                return link.rsplit(".lock-", 1)[1]
    return None


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session and everything it started."""
    for pid in reversed(_tree(proc)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


def _submitted(log: Path) -> int:
    return log.read_text().count("submitting flow run") if log.exists() else 0


@pytest.mark.slow
@pytest.mark.integration
def test_work_pool_with_two_workers_survives_a_killed_worker(tmp_path, sequential):
    port, store, logs = _free_port(), tmp_path / "store", tmp_path / "logs"
    logs.mkdir()
    api = f"http://127.0.0.1:{port}/api"
    env = _env(tmp_path, store, PREFECT_API_URL=api, PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_LOGGING_LEVEL="INFO")  # workers log what they take
    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str], **extra) -> subprocess.Popen:
        p = subprocess.Popen(cmd, env=env | extra, stdout=open(logs / f"{name}.log", "w"),  # noqa: SIM115
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        server = start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        _wait(lambda: _healthy(api), "the Prefect server", 120, [server])
        assert _unisd(env, "deploy", "--pool", "fanout", "--limit", "2").stdout.splitlines()[-1] == "unisd-job/fanout"
        workers = {w: start(f"worker-{w}", [PREFECT, "worker", "start", "--pool", "fanout", "--type", "process",
                                            "--limit", "1", "--name", f"worker-{w}"], UNISD_THREADS="1")
                   for w in ("a", "b")}
        run = [UNISD, "run", *SWEEP, "pool=fanout", "parallel=2"]
        first = start("run-1", run)
        # worker a is mid-training (its flow run holds a train key's lock): kill it with its flow run
        seen: list[str] = []

        def mid_training() -> bool:  # and its attempt is on record in the partial dir
            key = _training_key(workers["a"])
            if key and (store / "train" / f".partial-{key}" / ".attempts.json").exists():
                seen.append(key)
            return bool(seen)

        _wait(mid_training, "worker a mid-training", 600, [first, *workers.values()])
        killed = seen[0]
        _kill_tree(workers["a"])
        _kill_tree(first)  # it would wait forever on the dead worker's run
        res = subprocess.run(run, check=False, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "fan-out: 8 jobs to work pool 'fanout', at most 2 in flight" in res.stdout + res.stderr
        assert _submitted(logs / "worker-a.log") >= 1 and _submitted(logs / "worker-b.log") > 1
        manifest = json.loads((store / "train" / killed / "manifest.json").read_text())
        assert manifest["timings"]["attempts"] >= 2  # the killed attempt's partial dir was resumed
        keys, rows = sequential
        assert _keys(store) == keys  # no partial, duplicate or missing artifact
        assert _rows(env, store) == rows
        verify = subprocess.run([UNISD, "store", "verify", "--store", str(store)], check=False, env=env,
                                capture_output=True, text=True, timeout=300)
        assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                _kill_tree(p)

"""End to end against a real Prefect server: serve the deployments, run `unisd/full`, query the catalog."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from storage.catalog import query

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_deployment_run_full_on_smoke(tmp_path, tiny_model_dir):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api,
               UNISD_STORE=str(tmp_path / "store"), PREFECT_RUNNER_POLL_FREQUENCY="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO")
    env.pop("PREFECT_LOCAL_STORAGE_PATH", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=open(logs / "server.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        _wait_healthy(api, server)
        worker = subprocess.Popen([str(BIN / "unisd"), "serve", "--preset", "smoke"], env=env, cwd=tmp_path,
                                  stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.time() + 120
        while True:  # the deployment exists once `serve` has registered it
            res = subprocess.run([str(BIN / "prefect"), "deployment", "inspect", "unisd/full"], env=env,
                                 capture_output=True, text=True)
            if res.returncode == 0:
                break
            assert time.time() < deadline, (logs / "serve.log").read_text()[-3000:]
            assert worker.poll() is None, (logs / "serve.log").read_text()[-3000:]
            time.sleep(1)
        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "unisd/full", "--watch",
                              "--watch-timeout", "600"], env=env, capture_output=True, text=True, timeout=660)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + (logs / "serve.log").read_text()[-3000:]
        assert "Completed" in run.stdout + run.stderr
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)
    scores = query(tmp_path / "store", "SELECT dataset, method, metric, value, n FROM scores ORDER BY dataset")
    datasets = set(scores.column("dataset").to_pylist())
    assert {"humaneval", "medmcqa", "math"} <= datasets
    arts = query(tmp_path / "store", "SELECT stage, count(*) AS n FROM artifacts GROUP BY stage ORDER BY stage")
    counts = dict(zip(arts.column("stage").to_pylist(), arts.column("n").to_pylist()))
    assert counts == {"evaluate": 3, "ingest": 3, "report": 1}  # base only: no analyze or compare

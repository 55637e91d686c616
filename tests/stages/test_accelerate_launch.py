"""`accelerate launch` with the shipped DDP config trains through the `train` stage on two CPU processes
(gloo): the main process alone writes the artifact, the catalog finds it, its step losses and gradient
norms equal a one-process run's under the same key, and a second launch reuses it on every process.
The FSDP and DeepSpeed configs are GPU-only: the launcher refuses them on a CPU."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.train import TrainConfig
from stages.train.launch import LaunchError, check_backend
from storage import query


def launch_main(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m unisd.launch ARGS` in one process, as a user runs it without `accelerate launch` (in a
    child: the launcher sets up logging, accelerate's state and UNISD_STORE for its whole process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "unisd.launch", *args], env=env, check=False,
                          capture_output=True, text=True, timeout=300)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(store: Path, model: Path) -> list[str]:
    # greedy rollouts: each prompt's completion does not depend on which process samples it
    return ["--preset", "smoke_train", "--method", "sd", "--seed", "0", "--dataset", "medmcqa",
            "--store", str(store), f"model.path={model}", "train.rollout.temperature=0"]


def _launch(store: Path, model: Path) -> tuple[subprocess.CompletedProcess, float]:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(CONFIGS / "ddp.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "unisd.launch", *_train_args(store, model)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "UNISD_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:  # a process left waiting in a collective (or on the store's lock) hangs: fail, and stop them all
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the launch did not finish in 300 s:\n{err[-4000:]}")
    assert proc.returncode == 0, err[-4000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.perf_counter() - started


def _steps(store: Path) -> list[dict]:
    sql = ("SELECT step, loss, metrics['train/grad_norm'] AS grad_norm, "
           "metrics['train/tokens/completion'] AS tokens FROM train_steps ORDER BY step")
    return query(store, sql).to_pylist()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, str, float]:
    """(store, train key, seconds) of one two-process launch of the documented command."""
    store = tmp_path_factory.mktemp("ddp") / "store"
    res, seconds = _launch(store, tiny_model_dir)
    match = re.fullmatch(r"train/([0-9a-f]{64}) \((\d+) processes\)", res.stdout.strip())
    assert match is not None, res.stdout
    assert int(match[2]) == 2
    assert res.stderr.count("stage train: computing") == 1  # the main process alone takes the lock and writes
    return store, match[1], seconds


def test_ddp_config_trains_through_the_stage_on_two_cpu_processes(ddp_run, tmp_path, tiny_model_dir, capsys):
    ddp_store, key, seconds = ddp_run
    arts = query(ddp_store, "SELECT key FROM artifacts WHERE stage = 'train'").to_pylist()
    assert [a["key"] for a in arts] == [key]
    assert not list((ddp_store / "train").glob(".partial-*"))  # nothing left half-written
    assert (ddp_store / "train" / key / "files" / "checkpoint" / "merged" / "model.safetensors").exists()

    one_store = tmp_path / "one"
    one = launch_main(_train_args(one_store, tiny_model_dir))  # one process
    assert one.returncode == 0, one.stderr[-2000:]
    assert one.stdout.strip().splitlines()[-1] == f"train/{key} (1 processes)"  # same key: the count is not in it
    two, one = _steps(ddp_store), _steps(one_store)
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    for a, b in zip(two, one, strict=True):  # both processes' prompts count towards the logged step
        assert a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)  # DDP's averaged gradient
    assert one[0]["loss"] > 0 and one[0]["grad_norm"] > 0
    print(f"2-process launch (training): {seconds:.1f}s")


@pytest.mark.slow
def test_second_launch_reuses_the_artifact_on_every_process(ddp_run, tiny_model_dir):
    """The main process's cache hit is every process's: none of them trains (or waits for the others)."""
    store, key, _ = ddp_run
    res, seconds = _launch(store, tiny_model_dir)
    assert res.stdout.strip() == f"train/{key} (2 processes)"
    assert "stage train: computing" not in res.stderr and "stage train: reusing" in res.stderr
    print(f"2-process launch (reusing): {seconds:.1f}s")


@pytest.mark.parametrize("config", ["fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_sharded_configs_are_refused_on_cpu(config):
    """accelerate selects FSDP and DeepSpeed only for GPU processes and runs a CPU launch of these configs
    as plain DDP, so the launcher stops instead of training under a backend the config did not ask for."""
    from accelerate.commands.config.config_args import load_config_from_file

    kind = load_config_from_file(str(CONFIGS / config)).distributed_type.value
    env = {"ACCELERATE_USE_FSDP" if kind == "FSDP" else "ACCELERATE_USE_DEEPSPEED": "true"}
    with pytest.raises(LaunchError, match="only runs on GPUs"):
        check_backend("cpu", TrainConfig(), env)
    check_backend("cuda", TrainConfig(), env)


def test_deepspeed_needs_one_micro_batch_per_step():
    env = {"ACCELERATE_USE_DEEPSPEED": "true"}
    with pytest.raises(LaunchError, match="train.grad_accum=2"):
        check_backend("cuda", TrainConfig(batch_size=4, grad_accum=2), env)
    check_backend("cpu", TrainConfig(batch_size=4, grad_accum=2), {})  # DDP accumulates with no_sync


def test_launcher_names_a_bad_choice(tmp_path, tiny_model_dir, capsys):
    args = _train_args(tmp_path / "store", tiny_model_dir)
    bad = args[:args.index("--dataset") + 1] + ["nope"] + args[args.index("--dataset") + 2:]
    res = launch_main(bad)
    assert res.returncode == 2
    assert "--dataset 'nope': pick one of the experiment's datasets (medmcqa, math)" in res.stderr
    res = launch_main([*args[:3], "base", *args[4:]])
    assert res.returncode == 2
    assert "--method 'base': not a training method" in res.stderr

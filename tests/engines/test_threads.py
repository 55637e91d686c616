"""Threads that fit the machine: affinity and cgroup quotas bound the count, DDP processes share it,
and the choice reaches torch and every worker process started afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from engines.threads import _cgroup_quota, available_cores, resolve_threads


def test_cgroup_v2_quota_bounds_the_count(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2 threads
    assert _cgroup_quota(tmp_path) == 1.5
    assert available_cores(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU -> still one thread
    assert available_cores(tmp_path) == 1


def test_no_quota_means_the_affinity_mask(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None
    assert available_cores(tmp_path) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert available_cores(tmp_path) == len(os.sched_getaffinity(0))


def test_local_processes_share_the_cores(monkeypatch):
    monkeypatch.delenv("UNISD_THREADS", raising=False)
    assert resolve_threads(8, processes=2) == 4 and resolve_threads(3, processes=2) == 1
    assert resolve_threads(1, processes=4) == 1
    monkeypatch.setenv("UNISD_THREADS", "6")
    assert resolve_threads(None, processes=2) == 3
    assert resolve_threads(2) == 2  # an explicit setting wins over the environment
    monkeypatch.setenv("UNISD_THREADS", "zero")
    with pytest.raises(ValueError, match="UNISD_THREADS"):
        resolve_threads(None)


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) not installed")
def test_affinity_reaches_torch_and_child_processes():
    code = ("import os, subprocess, sys, torch\n"
            "from engines.threads import apply_threads\n"
            "n = apply_threads(None)\n"
            "child = subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"OMP_NUM_THREADS\"])'],"
            " capture_output=True, text=True).stdout.strip()\n"
            "print(n, torch.get_num_threads(), child)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("UNISD_THREADS", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")}
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1"]
    env["LOCAL_WORLD_SIZE"] = "2"  # two DDP processes on the machine's cores
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=120)
    assert out.returncode == 0, out.stderr
    expect = str(max(1, available_cores() // 2))
    assert out.stdout.split() == [expect, expect, expect]

"""Threads that fit the machine: how many cores this process may really use, applied to torch and workers.

torch sizes its OpenMP pool by the host's core count, which is wrong in a container (a CPU quota of 2 on
a 64-core host) or under `taskset`. An oversubscribed OpenMP pool does not degrade gracefully: its
threads spin-wait for each other, so one training step beside another CPU job was measured ~40x slower
than with one thread. The usable count is the smallest of the CPU affinity mask and the cgroup quota
(v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`), and it is applied to torch's intra-op pool
and exported as OMP/MKL/OpenBLAS thread counts so that every worker process started afterwards
(sandboxed programs, `accelerate launch`, servers) inherits it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_applied: int | None = None


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's CFS quota (None: no quota or no cgroup filesystem)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: min(affinity mask, cgroup quota rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity API
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def resolve_threads(threads: int | None, processes: int = 1) -> int:
    """`threads` (None = $UNISD_THREADS, else the usable cores) shared by `processes` local processes."""
    if threads is None and os.environ.get("UNISD_THREADS", "").strip():
        try:
            threads = int(os.environ["UNISD_THREADS"])
        except ValueError:
            raise ValueError(f"UNISD_THREADS: not an integer: {os.environ['UNISD_THREADS']!r}") from None
        if threads < 1:
            raise ValueError(f"UNISD_THREADS: must be >= 1, got {threads}")
    total = threads if threads is not None else available_cores()
    return max(1, total // max(1, processes))


def local_processes() -> int:
    """Processes of one distributed job on this machine (torchrun / accelerate set LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def apply_threads(threads: int | None, processes: int | None = None) -> int:
    """Set torch's intra-op threads and the worker environment; logs the choice once. Returns it.

    `processes` defaults to the local processes of a distributed launch, which share the cores.
    """
    global _applied
    processes = local_processes() if processes is None else processes
    n = resolve_threads(threads, processes)
    for name in _ENV:
        os.environ[name] = str(n)
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if _applied != n:
        log.info("threads: %d (usable cores %d, local processes %d)", n, available_cores(), processes)
        _applied = n
    return n

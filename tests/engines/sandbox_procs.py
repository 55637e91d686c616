"""Test helper: find the processes a sandbox run left behind, robust to other processes on the machine.

`become_subreaper` makes this test process the reaper of its orphaned descendants (``PR_SET_CHILD_
SUBREAPER``), so a sandboxed process that escaped its parent is re-parented here rather than to init, and
`descendants` (walking ``/proc``) sees it.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper(on: bool = True) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _parents() -> dict[int, tuple[int, str, bytes]]:
    out = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(name)] = (int(fields[1]), fields[0], cmdline)
    return out


def descendants(root: int | None = None) -> list[tuple[int, bytes]]:
    """Live (not zombie) descendants of ``root`` (default: this process), with their command lines."""
    root = os.getpid() if root is None else root
    table = _parents()
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, state, cmdline) in table.items():
            if ppid == parent:
                frontier.append(pid)
                if state != "Z":
                    found.append((pid, cmdline))
    return found


def sandbox_leftovers(wait_s: float = 2.0, root: int | None = None) -> list[tuple[int, bytes]]:
    """Descendants that belong to a sandbox run (bwrap or the harness), after waiting up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        left = [(pid, cmd) for pid, cmd in descendants(root) if b"bwrap" in cmd or b'"job_fd"' in cmd]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)

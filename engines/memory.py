"""Peak memory of one piece of work, not of the whole process.

`ru_maxrss` is the process-lifetime maximum: a method trained after another in the same process
inherits the first one's peak. On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the
resident-set high-water mark (VmHWM) to the current RSS, so a stage can measure its own peak from its
start. On CUDA the allocator's peak statistics are reset instead. Where neither is possible (macOS),
the lifetime maximum is reported and `reset_peak_memory` returns False.
"""

from __future__ import annotations

import re
import resource
import sys

_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def reset_peak_memory() -> bool:
    """Start a new peak-memory window (RSS high-water mark and CUDA peak stats). True where supported."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Resident-set high-water mark since the last reset (MiB); the lifetime max where none exists."""
    try:
        with open("/proc/self/status") as f:
            m = _HWM.search(f.read())
        if m:
            return int(m.group(1)) / 1024.0
    except OSError:
        pass
    scale = 1.0 if sys.platform != "darwin" else 1024.0  # Linux reports KiB, macOS bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 / scale


def peak_memory_mb() -> float:
    """CUDA peak allocated when CUDA is in use, else the RSS peak, both since the last reset."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()

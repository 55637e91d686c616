"""Wall time and peak memory of a stage over all its attempts, for the manifest's `timings` (and the
train loop's per-run peak).

A long stage that is killed and resumed finishes in its last attempt, but the work it reports was
done across all of them. While a stage computes, a daemon thread records the attempt's elapsed seconds
in ``.attempts.json`` inside the partial directory every few seconds, so a killed attempt leaves its
time behind (up to one interval is lost); the attempt that publishes adds them up. Peak memory is the
stage's own: the resident-set high-water mark is reset when the attempt starts (Linux
``/proc/self/clear_refs``), so a stage run after a memory-hungry one in the same process does not
inherit its peak; where that is unsupported, ``peak_rss_mb`` is the process-lifetime maximum and
``peak_rss_scope`` says so.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import threading
import time
from pathlib import Path

ATTEMPTS = ".attempts.json"
_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def reset_rss_peak() -> bool:
    """Start a new resident-set high-water-mark window (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_peak_mb() -> float:
    """RSS high-water mark since the last reset (MiB); the process-lifetime maximum where none exists."""
    try:
        with open("/proc/self/status") as f:
            m = _HWM.search(f.read())
        if m:
            return int(m.group(1)) / 1024.0
    except OSError:
        pass
    scale = 1024.0 if sys.platform == "darwin" else 1.0  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 / scale


class AttemptClock:
    """Times one attempt of a stage inside its partial directory; `finish()` gives the manifest timings."""

    def __init__(self, partial: Path, interval_s: float = 2.0) -> None:
        self.path, self.interval = partial / ATTEMPTS, interval_s
        try:
            self.previous = [float(s) for s in json.loads(self.path.read_text())]
        except (OSError, ValueError, TypeError):
            self.previous = []
        self.scoped = reset_rss_peak()
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="attempt-clock", daemon=True)
        self._thread.start()

    def _record(self) -> None:
        tmp = self.path.with_name(f"{ATTEMPTS}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps([*self.previous, round(time.perf_counter() - self.t0, 3)]))
            os.replace(tmp, self.path)
        except OSError:  # the partial dir is being published or removed: nothing left to record
            pass

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def _halt(self) -> None:  # after this no heartbeat writes any more
        self._stop.set()
        self._thread.join()

    def stop(self) -> None:
        """A failed attempt: stop and leave its time in the partial dir for the attempt that finishes."""
        self._halt()
        self._record()

    def finish(self) -> dict:
        """Stop the clock; seconds over every attempt, this attempt's, their count and the peak RSS."""
        self._halt()
        last = round(time.perf_counter() - self.t0, 3)
        return {"seconds": round(sum(self.previous) + last, 3), "last_attempt_seconds": last,
                "attempts": len(self.previous) + 1, "peak_rss_mb": round(rss_peak_mb(), 1),
                "peak_rss_scope": "stage" if self.scoped else "process"}

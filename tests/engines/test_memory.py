"""Peak memory is measured per piece of work: a reset starts a new window, so a stage that runs after a
memory-hungry one in the same process does not inherit its peak."""

from __future__ import annotations

import sys

import pytest

from engines.memory import peak_rss_mb, reset_peak_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/clear_refs")
def test_reset_starts_a_new_peak_window():
    assert reset_peak_memory()
    before = peak_rss_mb()
    hog = bytearray(300 * 2**20)  # touched pages: resident
    hog[:: 4096] = b"x" * len(hog[:: 4096])
    high = peak_rss_mb()
    assert high >= before + 250
    del hog
    assert peak_rss_mb() >= high - 1  # without a reset the peak stays (what ru_maxrss reports forever)
    assert reset_peak_memory()
    assert peak_rss_mb() < high - 250  # the next stage's own peak

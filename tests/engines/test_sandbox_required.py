"""CI must not pass by skipping the sandbox tests: with UNISD_REQUIRE_SANDBOX=1 a missing bwrap fails."""

from __future__ import annotations

import os

import pytest

from engines.sandbox import sandbox_unavailable_reason


def test_sandbox_is_available_where_required():
    if os.environ.get("UNISD_REQUIRE_SANDBOX") != "1":
        pytest.skip("UNISD_REQUIRE_SANDBOX is not set (CI sets it)")
    reason = sandbox_unavailable_reason()
    assert reason is None, f"UNISD_REQUIRE_SANDBOX=1 but the sandbox cannot run: {reason}"

"""requirements.lock agrees with pyproject.toml: every core dependency and every dependency of the extras
setup installs has a pinned line in the lock that satisfies its specifier; the lock was made for exactly
those extras; setup installs through it; the CPU torch pin holds; GPU packages stay out."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
SETUP = (ROOT / "scripts" / "setup.sh").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
GPU_ONLY = "gpu"


def _lock() -> tuple[dict[str, Version], list[str]]:
    pins: dict[str, Version] = {}
    extras: list[str] = []
    for n, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.strip()
        if line.startswith("# extras:"):
            extras = [e.strip() for e in line.split(":", 1)[1].split(",") if e.strip()]
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert m, f"requirements.lock line {n}: {line!r} is not an exact name==version pin"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"requirements.lock line {n}: {name} is pinned twice"
        pins[name] = Version(m.group(2))
    return pins, extras


def _setup_extras() -> list[str]:
    m = re.search(r"^EXTRAS=(\S+)$", SETUP, re.MULTILINE)
    assert m, "scripts/setup.sh names the extras it installs in EXTRAS="
    return m.group(1).split(",")


def test_lock_is_made_for_the_extras_setup_installs():
    _, extras = _lock()
    optional = set(PYPROJECT["optional-dependencies"])
    assert extras == _setup_extras(), "requirements.lock is stale: its extras differ from setup.sh's (run `make lock`)"
    assert set(extras) <= optional, f"requirements.lock names extras pyproject.toml lacks: {set(extras) - optional}"
    assert set(extras) == optional - {GPU_ONLY}, \
        f"extras not locked (add them to setup.sh's EXTRAS and run `make lock`): {optional - {GPU_ONLY} - set(extras)}"


def test_every_dependency_is_pinned_within_its_specifier():
    pins, extras = _lock()
    wanted = [*PYPROJECT["dependencies"], *(r for e in extras for r in PYPROJECT["optional-dependencies"][e])]
    problems = []
    for text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} has no pin")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} is pinned to {pins[name]}")
    assert not problems, "pyproject.toml and requirements.lock disagree (run `make lock`): " + "; ".join(problems)


def test_setup_installs_through_the_lock_and_keeps_the_cpu_torch_pin():
    pins, _ = _lock()
    assert pins["torch"] == Version("2.13.0")
    assert 'LOCK=(-c requirements.lock)' in SETUP and SETUP.count('"${LOCK[@]}"') == 3
    assert '"torch==2.13.0"' in SETUP
    for req in PYPROJECT["optional-dependencies"][GPU_ONLY]:  # vLLM & co. would break the CPU stack
        assert canonicalize_name(Requirement(req).name) not in pins


def test_lock_check_fails_on_a_disagreement(tmp_path, monkeypatch):
    """The checks above can fail: an out-of-range pin and a missing pin are both reported."""
    pins, extras = _lock()
    lines = [f"# extras: {','.join(extras)}"] + [f"{n}=={v}" for n, v in pins.items() if n not in ("duckdb", "polars")]
    lines.append("duckdb==1.0.0")  # pyproject wants duckdb>=2,<3; polars is missing altogether
    fake = tmp_path / "requirements.lock"
    fake.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(sys.modules[__name__], "LOCK", fake)
    try:
        test_every_dependency_is_pinned_within_its_specifier()
    except AssertionError as e:
        assert "duckdb<3,>=2 is pinned to 1.0.0" in str(e) and "polars>=1 has no pin" in str(e)
    else:
        raise AssertionError("a stale lock passed the check")

"""Architecture rules: imports flow flows -> stages -> {objectives, engines, storage, schemas}; Prefect only in flows/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "schemas": set(),
    "storage": {"schemas"},
    "objectives": set(),
    "engines": {"schemas"},
    "stages": {"schemas", "storage", "engines", "objectives", "stages"},
    "flows": {"stages", "storage", "schemas", "engines", "unisd", "flows"},
}
PACKAGES = {"schemas", "storage", "objectives", "engines", "stages", "flows", "unisd"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package):
    for path in (ROOT / package).rglob("*.py"):
        imported = _imports(path) & PACKAGES - {package}
        bad = imported - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        if package != "flows":
            assert "prefect" not in _imports(path), f"{path.relative_to(ROOT)} imports prefect"


# Run only inside the sandbox: the evaluator reads this file as text and hands it to the confined
# interpreter; no module may import it (checked below), so its exec never runs in-process.
SANDBOX_PROGRAMS = {ROOT / "engines" / "sandbox_harness.py"}


def test_no_nltk_download_and_no_exec():
    """Nothing downloads WordNet at run time, and generated code never runs in-process."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                    assert not any(n and n.endswith("sandbox_harness") for n in names), f"{path} imports the harness"
            if path in SANDBOX_PROGRAMS:
                continue
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                assert not (isinstance(f, ast.Attribute) and f.attr == "download"
                            and isinstance(f.value, ast.Name) and f.value.id == "nltk"), path
                assert not (isinstance(f, ast.Name) and f.id in ("exec", "eval")), f"{path}:{node.lineno}"


def test_readme_config_reference_is_current():
    from unisd.config import ExperimentConfig
    from unisd.configtools import reference_markdown

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- config-reference:start -->") + len("<!-- config-reference:start -->\n")
    end = readme.index("<!-- config-reference:end -->")
    assert readme[start:end] == reference_markdown(ExperimentConfig), \
        "README config reference is stale: run `python scripts/update_readme.py`"

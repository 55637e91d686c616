"""A failing command prints one error line (and where the full log is), never a traceback unless -v.

The end-to-end cases run the real `unisd` executable on a config whose only dataset is a file that is
not UTF-8, so the ingest stage fails inside a Prefect task, where Prefect itself logs the traceback.
The in-process cases check the console/file split of `unisd.logs` with Prefect's own logger names.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unisd import logs
from unisd.cli import main

UNISD = str(Path(sys.executable).parent / "unisd")


def _bad_setup(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "notes.csv"
    data.write_bytes("id,prompt,answer\n1,What is 2+2?,4\n2,Combien coûte un café ?,2\n".encode("latin-1"))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"extends: smoke\ndatasets:\n  - {{dataset: local, family: free, path: {data}}}\n")
    return data, cfg


def _unisd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), UNISD_STORE=str(tmp_path / "store"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO")
    return subprocess.run([UNISD, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)


def _log_path(stderr: str) -> Path:
    lines = [line for line in stderr.splitlines() if line.startswith("unisd: full log and traceback: ")]
    assert len(lines) == 1, stderr
    return Path(lines[0].split(": ", 2)[2])


@pytest.mark.integration
def test_stage_failure_is_one_line_and_the_traceback_is_in_the_log(tmp_path: Path) -> None:
    data, cfg = _bad_setup(tmp_path)
    res = _unisd(tmp_path, "run", "--config", str(cfg))
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.splitlines()
    errors = [line for line in err if line.startswith("unisd: error:")]
    offset = data.read_bytes().index(b"\xfb")
    expected = f"unisd: error: {data}, line 3: not valid UTF-8 (byte 0xfb at offset {offset}); "
    expected += "save the file as UTF-8"
    assert errors == [expected], res.stderr[-3000:]
    assert "Traceback" not in res.stderr and 'File "' not in res.stderr
    assert len(err) <= 10, res.stderr  # the run's progress lines, the error and where the log is
    log = _log_path(res.stderr)
    assert log.parent == tmp_path / "store" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "IngestError" in text
    assert "command failed: IngestError" in text  # the error that ended the command, with its traceback


@pytest.mark.integration
@pytest.mark.slow
def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    data, cfg = _bad_setup(tmp_path)
    res = _unisd(tmp_path, "run", "--verbose", "--config", str(cfg))
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.count(f"unisd: error: {data}, line 3: not valid UTF-8") == 1
    assert _log_path(res.stderr).is_file()


@pytest.fixture()
def root_logging():
    """The root logger as `unisd.logs` leaves it, and Prefect's loggers at no level of their own: an
    earlier in-process flow run has Prefect set up its logging, which puts ``prefect`` at this suite's
    PREFECT_LOGGING_LEVEL (WARNING) and would drop the INFO records these tests route."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    prefect_levels = {name: logging.getLogger(name).level for name in ("prefect", *logs._FAILURE_LOGGERS)}
    for name in prefect_levels:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name, level in prefect_levels.items():
        logging.getLogger(name).setLevel(level)
    for h in root.handlers[:]:
        root.removeHandler(h)
        h.close()
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def _failed_task_record() -> None:
    try:
        raise ValueError("boom in a task")
    except ValueError:
        logging.getLogger("prefect.task_runs").exception("Task run failed with exception: %r", "boom")
    logging.getLogger("prefect.flow_runs").info("Finished in state Failed('boom in a task')")
    logging.getLogger("stages.x").warning("a warning", exc_info=(ValueError, ValueError("w"), None))
    logging.getLogger("stages.x").info("progress line")


def test_console_drops_tracebacks_and_failure_echoes_the_file_keeps_them(tmp_path, capsys, root_logging):
    logs.setup(verbose=False)
    path = logs.attach_file(tmp_path)
    _failed_task_record()
    err = capsys.readouterr().err
    assert "boom" not in err and "Traceback" not in err
    assert "WARNING stages.x: a warning" in err and "progress line" in err
    text = path.read_text()
    assert "Traceback (most recent call last)" in text and "ValueError: boom in a task" in text
    assert "Finished in state Failed" in text and "ValueError: w" in text


def test_verbose_console_keeps_tracebacks(tmp_path, capsys, root_logging):
    logs.setup(verbose=True)
    _failed_task_record()
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: boom in a task" in err


def test_log_files_are_pruned(tmp_path, root_logging):
    logs.setup(verbose=False)
    folder = tmp_path / "logs"
    folder.mkdir()
    for i in range(logs.KEEP + 5):
        old = folder / f"old-{i:03d}.log"
        old.write_text("x")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    path = logs.attach_file(tmp_path)
    kept = sorted(p.name for p in folder.glob("*.log"))
    assert len(kept) == logs.KEEP and path.name in kept and "old-000.log" not in kept


def test_config_error_is_one_line_and_verbose_flag_works_after_the_command(capsys, root_logging):
    assert main(["config", "show", "--preset", "smoke", "evaluate.temperature=-1"]) == 2
    line = "unisd: error: evaluate.temperature: must be >= 0, got -1"
    assert capsys.readouterr().err.splitlines() == [line]
    assert main(["config", "show", "--verbose", "--preset", "smoke", "evaluate.temperature=-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == line


def test_non_utf8_config_file_names_file_and_line(tmp_path, capsys, root_logging):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"extends: smoke\nname: caf\xe9\n")
    assert main(["config", "show", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"unisd: error: {cfg}, line 2: not valid UTF-8 (byte 0xe9 at offset 24); save the file as UTF-8"]


def test_unexpected_error_is_one_line_naming_its_type(tmp_path, capsys, root_logging):
    assert main(["config", "show", "--config", str(tmp_path)]) == 1  # a folder: IsADirectoryError
    err = capsys.readouterr().err.splitlines()
    assert err == [f"unisd: error: IsADirectoryError: [Errno 21] Is a directory: '{tmp_path}'",
                   "unisd: run with --verbose to see the traceback"]

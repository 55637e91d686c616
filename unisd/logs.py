"""Where `unisd` logs go: a short console on stderr, the full record in a log file of the store.

The console shows one line per log record and never a traceback; `--verbose` adds tracebacks and
debug records. Prefect's loggers propagate to the root logger configured here (Prefect leaves a root
logger that already has a handler alone), so the traceback Prefect logs when a task or flow fails
obeys the same rule, and its reports of the failed run, which the final ``unisd: error:`` line
repeats, are left off the console. Commands that run stages also write every record, tracebacks included, to
``<store>/logs/<UTC time>-<pid>.log`` (the newest `KEEP` are kept), and the traceback of the error
that ends the command goes there too, so the terminal can say where to find it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path

CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(process)d %(name)s: %(message)s"
KEEP = 50
"""Log files kept per store (older ones are removed when a new one starts)."""
NOISY = ("httpx", "httpcore", "urllib3", "filelock")
_FAILURE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")

_file_handler: logging.FileHandler | None = None


class BriefFormatter(logging.Formatter):
    """The console format without the traceback or stack a record may carry."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class NoFailureEcho(logging.Filter):
    """Drops Prefect's reports of a failed task or flow run: the traceback, then "Finished in state
    Failed(...)" for the task and again for the flow, each repeating the final error line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in _FAILURE_LOGGERS:
            return True
        failed = record.getMessage().startswith("Finished in state Failed")
        return record.levelno < logging.ERROR and not failed


def setup(verbose: bool) -> None:
    """Route the root logger to stderr: one line per record, tracebacks only when ``verbose``."""
    global _file_handler
    root = logging.getLogger()
    for handler in list(root.handlers):  # a second call (tests call main() repeatedly) starts afresh
        root.removeHandler(handler)
        handler.close()
    _file_handler = None
    console = logging.StreamHandler(sys.stderr)
    fmt = logging.Formatter if verbose else BriefFormatter
    console.setFormatter(fmt(CONSOLE_FORMAT, datefmt="%H:%M:%S"))
    if not verbose:
        console.addFilter(NoFailureEcho())
    root.addHandler(console)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def attach_file(store_root: Path) -> Path:
    """Also write every record to a new ``<store_root>/logs/<time>-<pid>.log``; returns its path."""
    global _file_handler
    folder = Path(store_root) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{os.getpid()}.log"
    if _file_handler is not None:
        logging.getLogger().removeHandler(_file_handler)
        _file_handler.close()
    _file_handler = logging.FileHandler(path, encoding="utf-8", delay=False)
    _file_handler.setFormatter(logging.Formatter(FILE_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(_file_handler)
    _prune(folder)
    return path


def _prune(folder: Path) -> None:
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in logs[KEEP:]:
        old.unlink(missing_ok=True)


def log_file() -> Path | None:
    """The log file of this command, if it has one."""
    return Path(_file_handler.baseFilename) if _file_handler is not None else None


def record_failure(exc: BaseException) -> None:
    """Write the traceback of the error that ends the command to the log file (not to the console)."""
    if _file_handler is None:
        return
    record = logging.getLogger("unisd").makeRecord(
        "unisd", logging.ERROR, __file__, 0, "command failed: %s: %s", (type(exc).__name__, exc),
        (type(exc), exc, exc.__traceback__))
    _file_handler.handle(record)
    _file_handler.flush()

"""Per-key exclusive file locks (``fcntl.flock``) so one process at a time writes an artifact.

The lock file is removed by whoever holds the lock when it releases it. To make that safe, an
acquirer checks after locking that the path still names the inode it locked, and retries if not
(otherwise two processes could each hold a lock on a different inode of the same path).
The kernel drops the lock when a process dies, so a crash never leaves a key locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def _try_lock(path: Path, blocking: bool) -> int | None:
    """Return an fd holding the lock on ``path``, or None if not blocking and someone else holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not blocking:
                    os.close(fd)
                    return None
                log.info("waiting for another run that holds %s", path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                cur = os.stat(path)
            except FileNotFoundError:
                cur = None
            if cur is not None and (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file while we waited: lock the new one


def _release(path: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (blocking); the lock file is removed on release."""
    path = Path(path)
    fd = _try_lock(path, blocking=True)
    assert fd is not None
    try:
        yield
    finally:
        _release(path, fd)


@contextlib.contextmanager
def try_file_lock(path: str | Path) -> Iterator[bool]:
    """Yield True while holding the lock on ``path``, or False at once if another process holds it."""
    path = Path(path)
    fd = _try_lock(path, blocking=False)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            _release(path, fd)

"""Run untrusted Python (model-generated code and its tests) isolated from the evaluating machine.

Isolation is bubblewrap's (``bwrap``, Debian package ``bubblewrap``; `engines.sandbox_runtime` builds
the command). Each run gets its own user, mount, PID, network, IPC, UTS and cgroup namespaces, runs as
uid/gid 65534 with no capabilities and no way to create further user namespaces, in a new session, and
dies with the evaluator (``--die-with-parent``; the PID namespace ends every process of the run when its
first process exits). Its filesystem holds only read-only binds of the interpreter's prefix (without
its site-packages) and the system libraries, a read-only private ``/proc`` showing only the run's
processes, a minimal read-only ``/dev`` without host device nodes, and private tmpfs mounts of
``SandboxLimits.disk_mb`` each for ``/tmp``, ``/var/tmp``, ``/dev/shm`` and the work dir ``/sandbox``;
the root itself is read-only. The network namespace has only a down loopback. rlimits bound each
process (CPU, address space, file size, open files, processes - counted inside the run's own user
namespace, so concurrent runs never share a budget - and no core files), a watchdog caps the CPU time
of the run's processes together, and the evaluator kills the run at ``timeout_s``. The program's
stdout/stderr go to unlinked files read back truncated.

Inside uid 65534 is, on the host, the uid bwrap runs as: as root, bwrap is started as uid 65534 when
that uid can reach the interpreter; otherwise (an interpreter under ``/root``) as the caller, which is
why everything the run sees is mounted read-only or is its own tmpfs, and no host device node is bound
(the run would own root's files). `sandbox_protections` reports which (``host_uid``).

Verdicts (`engines.sandbox_harness`). A `CodeTask` is a candidate module plus tests: the candidate
runs in a worker process, the tests in a separate checker process that receives the candidate's return
values as plain builtin values (no object of the program's making ever reaches the tests), never lets
the program see the tests or the trusted setup, and writes the verdict to a pipe the program holds no
end of. A plain string is a *script*: it passes if it runs to its end and exits 0, which a program can
fake; script mode proves nothing about a hostile program and scoring never uses it.

What this does not protect against: kernel bugs (there is no seccomp filter); host memory used up to
the per-process address-space limit times the process limit plus the four tmpfs caps; CPU contention
between concurrent runs until the limits fire; reading files under the bound interpreter and library
directories (system files; when bwrap runs as the caller, also those only the caller may read there)
and system-wide ``/proc`` information (load, memory, kernel settings). Test semantics are Python's own on
the rebuilt values (``1 == True`` and ``1 == 1.0`` hold, as in the reference harnesses); candidate
functions taking or returning other objects (classes, generators, callables) cannot be checked and fail.

Without bubblewrap, or where it cannot create namespaces, `require_sandbox` refuses to run code with a
one-line reason, unless the caller opts in to the unconfined mode (``allow_unsandboxed``): the same
harness and rlimits in a plain subprocess, with a loud warning - only for code you trust.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from engines import sandbox_runtime as rt

log = logging.getLogger(__name__)

_CODEC_IMPORT = "from engines.sandbox_codec import Gone, Rejected, decode, encode, receive, send"


def _harness_source() -> str:
    """The harness as one ``-c`` program: the codec's source in place of the harness's import of it."""
    here = Path(__file__).parent
    harness = (here / "sandbox_harness.py").read_text(encoding="utf-8")
    codec = (here / "sandbox_codec.py").read_text(encoding="utf-8")
    line = next(ln for ln in harness.splitlines() if ln.startswith(_CODEC_IMPORT))
    return harness.replace(line, codec, 1)


HARNESS = _harness_source()
_MAX_MESSAGE = 8 << 20
_MAX_REPORT = 64 << 10
_STATUSES = ("passed", "failed", "timeout", "error")


class SandboxUnavailable(RuntimeError):
    """Code cannot be run isolated here (and the unconfined mode was not asked for)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    """Wall-clock limit; every process of the run is killed when it expires."""
    cpu_s: int = 10
    """RLIMIT_CPU per process in seconds (SIGXCPU: reported as ``timeout``) and the CPU time of all the
    run's processes together."""
    memory_mb: int = 1024
    """RLIMIT_AS, address space per process in MiB."""
    file_size_mb: int = 16
    """RLIMIT_FSIZE: largest file the program may write (its stdout/stderr included)."""
    disk_mb: int = 32
    """Size of each private tmpfs (work dir, /tmp, /var/tmp, /dev/shm) in MiB."""
    max_processes: int = 64
    """Forks the program may make (audit hook); RLIMIT_NPROC, inside the run's own user namespace, is
    this + 8."""
    max_output_bytes: int = 65536
    """stdout and stderr are each returned truncated to this many bytes (head and tail kept)."""

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "disk_mb", "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_processes < 0:
            raise ValueError(f"SandboxLimits.max_processes must be >= 0, got {self.max_processes!r}")


@dataclass(frozen=True)
class CodeTask:
    """A candidate module checked by tests that the candidate never sees."""

    sources: tuple[str, ...]
    """Layouts of the candidate module; the first that compiles (inside the sandbox) runs."""
    tests: str
    """Test code (asserts, ``def check(candidate)`` + a call) run by the checker."""
    entry_point: str | None = None
    """The candidate function the tests call; always a proxy to the candidate, never the setup's stub."""
    setup: str = ""
    """Trusted definitions the tests may use (a HumanEval prompt's helpers), run by the checker."""


@dataclass(frozen=True)
class SandboxResult:
    status: str
    """passed | failed | timeout | error (the sandbox itself could not run the program)."""
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    checker: str = ""
    """The checker's note: the failing test line and error, or why the run did not pass."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class _Runtime:
    name: str
    bwrap: str | None  # None: unconfined
    drop: bool = False  # start bwrap as uid 65534 (we are root)


_lock = threading.Lock()


@functools.cache
def _bwrap_runtime() -> _Runtime | str:
    """The bubblewrap runtime if it works here (probed once with the evaluator's interpreter), else why not."""
    bwrap = rt.bwrap_path()
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    why = "?"
    for drop in (True, False) if os.geteuid() == 0 else (False,):  # an unprivileged host uid first
        runtime = _Runtime(rt.bwrap_version(bwrap), bwrap, drop)
        result = _run(rt.probe_program(), SandboxLimits(timeout_s=30.0, memory_mb=512), runtime)
        if result.passed:
            log.info("sandbox: %s, host uid %s, interpreter %s", runtime.name, rt.UID if drop else os.getuid(),
                     rt.interpreter())
            return runtime
        why = ((result.stderr.strip() or result.checker.strip() or result.status).splitlines() or ["?"])[-1]
        log.debug("sandbox: %s (host uid drop=%s) failed its probe: %s", runtime.name, drop, why)
    return f"bubblewrap cannot run the sandbox here ({why[:200]})"


def _runtime(allow_unsandboxed: bool, knob: str = "allow_unsandboxed") -> _Runtime:
    with _lock:
        found = _bwrap_runtime()
    if isinstance(found, _Runtime):
        return found
    if not allow_unsandboxed:
        raise SandboxUnavailable(f"code evaluation needs an isolated sandbox, but {found}: {rt.INSTALL_HINT} "
                                 f"(or set {knob}: true to run generated code unconfined)")
    _warn_unconfined(found)
    return _Runtime("unsandboxed", None)


@functools.cache
def _warn_unconfined(reason: str) -> None:
    log.warning("sandbox: %s; RUNNING GENERATED CODE UNCONFINED because allow_unsandboxed is set: it can read, "
                "write and delete anything this user can. Only do this with code you trust.", reason)


def sandbox_unavailable_reason() -> str | None:
    """Why bubblewrap cannot isolate code here (probed once), or None if it can."""
    with _lock:
        found = _bwrap_runtime()
    return None if isinstance(found, _Runtime) else found


def require_sandbox(allow_unsandboxed: bool = False, knob: str = "allow_unsandboxed") -> str:
    """The runtime code will run under; SandboxUnavailable (one line naming ``knob``) if none may run."""
    return _runtime(allow_unsandboxed, knob).name


def sandbox_protections(allow_unsandboxed: bool = False) -> dict[str, object]:
    """Which isolation applies (probed once): for logs, manifests and tests."""
    runtime = _runtime(allow_unsandboxed)
    confined = runtime.bwrap is not None
    return {"runtime": runtime.name, "isolated": confined, "user_namespace": confined, "pid_namespace": confined,
            "network_namespace": confined, "mount_namespace": confined, "uid": rt.UID if confined else os.getuid(),
            "host_uid": rt.UID if runtime.drop else os.getuid(),
            "capabilities": "none" if confined else "the caller's", "interpreter": rt.interpreter(),
            "audit_hook": True}


def run_python(program: str | CodeTask, limits: SandboxLimits = SandboxLimits(),
               allow_unsandboxed: bool = False) -> SandboxResult:
    """Run a script or a `CodeTask` confined; never raises for anything the program does."""
    return _run(program, limits, _runtime(allow_unsandboxed))


def run_many(programs: Sequence[str | CodeTask], limits: SandboxLimits = SandboxLimits(), workers: int = 2,
             allow_unsandboxed: bool = False) -> list[SandboxResult]:
    """``run_python`` over ``programs``, ``workers`` at a time; results in input order."""
    if not programs:
        return []
    runtime = _runtime(allow_unsandboxed)  # probe once, before the threads start
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(programs)))) as pool:
        return list(pool.map(lambda p: _run(p, limits, runtime), programs))


def _memfd(name: str, obj: object) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    data = json.dumps(obj).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _run(program: str | CodeTask, limits: SandboxLimits, runtime: _Runtime) -> SandboxResult:
    start = time.monotonic()
    fds: list[int] = []
    host_work = None
    try:
        if runtime.bwrap is None:
            host_work = tempfile.mkdtemp(prefix="unisd-sandbox-")
        return _run_fds(program, limits, runtime, host_work, fds, start)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return SandboxResult("error", None, "", f"sandbox could not run the program: {e}", time.monotonic() - start)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if host_work is not None:
            shutil.rmtree(host_work, ignore_errors=True)


def _config(program: str | CodeTask, limits: SandboxLimits, runtime: _Runtime, work: str,
            fds: list[int]) -> tuple[dict, tuple[int, ...]]:
    task = program if isinstance(program, CodeTask) else None
    job = {"mode": "tests" if task else "script", "sources": list(task.sources) if task else [program]}
    job_fd = _memfd("unisd-job", job)
    fds.append(job_fd)
    secret_fd = -1
    if task is not None:
        secret_fd = _memfd("unisd-tests", {"tests": task.tests, "setup": task.setup, "entry_point": task.entry_point})
        fds.append(secret_fd)
    mb = 1 << 20
    nproc = limits.max_processes + 8
    cfg = {"work": work, "job_fd": job_fd, "secret_fd": secret_fd, "max_processes": limits.max_processes,
           "max_message_bytes": _MAX_MESSAGE, "cpu_s": limits.cpu_s, "pid_namespace": runtime.bwrap is not None,
           "rlimits": [("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
                       ("RLIMIT_AS", limits.memory_mb * mb, limits.memory_mb * mb),
                       ("RLIMIT_FSIZE", limits.file_size_mb * mb, limits.file_size_mb * mb),
                       ("RLIMIT_NOFILE", 256, 256), ("RLIMIT_NPROC", nproc, nproc), ("RLIMIT_CORE", 0, 0)]}
    return cfg, (job_fd, secret_fd) if secret_fd >= 0 else (job_fd,)


def _run_fds(program: str | CodeTask, limits: SandboxLimits, runtime: _Runtime, host_work: str | None,
             fds: list[int], start: float) -> SandboxResult:
    work = host_work or rt.WORK
    cfg, passed = _config(program, limits, runtime, work, fds)
    verdict_r, verdict_w = os.pipe()
    info_r, info_w = os.pipe()
    fds += [verdict_r, verdict_w, info_r, info_w]
    cfg["verdict_fd"] = verdict_w
    python = [rt.interpreter(), "-I", "-S", "-B", "-X", "utf8", "-c", HARNESS, json.dumps(cfg)]
    argv, mount_fds, user = python, (), {}
    if runtime.bwrap is not None:
        head, mount_fds = rt.bwrap_argv(runtime.bwrap, limits.disk_mb << 20, info_w)
        argv, user = [*head, *python], rt.popen_user(runtime.drop)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=host_work or "/",
                                env=env, start_new_session=True, pass_fds=(*passed, verdict_w, info_w, *mount_fds),
                                **user)
        for fd in (*passed, verdict_w, info_w):  # the child's ends: only the child holds them now
            os.close(fd)
            fds.remove(fd)
        try:
            finished = _wait_exit(proc.pid, limits.timeout_s)
            if not finished:
                _kill_sandbox(proc, info_r)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # unconfined mode: every process the run started
            returncode = proc.wait()
        duration = time.monotonic() - start
        stdout = _read_output(out, limits.max_output_bytes)
        stderr = _read_output(err, limits.max_output_bytes)
    report = _read_pipe(verdict_r, _MAX_REPORT)
    return _result(finished, report, returncode, stdout, stderr, duration)


def _kill_sandbox(proc: subprocess.Popen, info_r: int) -> None:
    """At the timeout: kill the run's PID-namespace init (all its processes go with it), then bwrap."""
    info = _read_pipe(info_r, 4096)
    with contextlib.suppress(ValueError, KeyError, TypeError, ProcessLookupError, PermissionError):
        os.kill(int(json.loads(info.decode() or "{}")["child-pid"]), signal.SIGKILL)
    _wait_exit(proc.pid, 2.0)  # bwrap reaps its init only once the whole namespace has died


def _result(finished: bool, report: bytes, returncode: int, stdout: str, stderr: str,
            duration: float) -> SandboxResult:
    lines = report.decode("utf-8", "replace").split("\n")
    if not finished:
        return SandboxResult("timeout", None, stdout, stderr, duration, "wall-clock limit reached")
    if lines[0] != "START":
        return SandboxResult("error", returncode, stdout, stderr, duration, "the sandbox did not start")
    try:
        verdict = json.loads(lines[1])
        status, code, note = verdict["status"], verdict["returncode"], str(verdict["detail"])
    except (ValueError, KeyError, TypeError, IndexError):
        return SandboxResult("failed", None, stdout, stderr, duration, "the checker ended without a verdict")
    if status not in _STATUSES or not (code is None or isinstance(code, int)):
        return SandboxResult("failed", None, stdout, stderr, duration, "malformed verdict")
    return SandboxResult(status, code, stdout, stderr, duration, note)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits, without reaping it (so its process group id cannot be reused yet)."""
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _read_pipe(fd: int, cap: int) -> bytes:
    """What is in the pipe now, at most ``cap`` bytes, never blocking."""
    os.set_blocking(fd, False)
    chunks, size = [], 0
    with contextlib.suppress(BlockingIOError):
        while size < cap:
            chunk = os.read(fd, cap - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def _read_output(f: IO[bytes], cap: int) -> str:
    """At most ``cap`` bytes of the file: head and tail if longer."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    if size <= cap:
        return f.read(size).decode("utf-8", "replace")
    marker = f"\n[... {size} bytes of output, middle cut ...]\n".encode()
    half = max(0, (cap - len(marker)) // 2)
    head = f.read(half)
    f.seek(size - half)
    tail = f.read(half)
    return (head + marker + tail).decode("utf-8", "replace")[:cap]

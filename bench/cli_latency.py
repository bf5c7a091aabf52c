"""How long the instant commands take, side by side with ``python -c "import torch"``.

    python bench/cli_latency.py [--runs 5]

Runs suites/smoke.yaml once into a temporary folder (so ``table`` and the
no-work ``run`` have records to read), then times, interleaved round by round
so that a change in machine load hits every command alike: ``import torch``,
``clbench --help``, ``clbench validate suites/paper.yaml``, ``clbench list
methods``, ``clbench table DIR``, ``clbench show DIR/<cell>`` and ``clbench run
suites/smoke.yaml`` with nothing left to do. Prints each command's median
seconds and its ratio to ``import torch``; the goal is at most 0.3 for each.
It is a benchmark, not a test: timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.3


def clbench_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m clbench.cli``."""
    script = Path(sys.executable).with_name("clbench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "clbench.cli"]


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    clbench = clbench_command()
    smoke = str(ROOT / "suites" / "smoke.yaml")
    tmp = Path(tempfile.mkdtemp(prefix="clbench-latency-"))
    try:
        results = tmp / "smoke"
        print(f"running {smoke} once into {results} ...", flush=True)
        subprocess.run([*clbench, "run", smoke, "--results", str(results)], check=True, env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cell = sorted((results / "records").glob("*.json"))[0].stem
        commands = {
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "clbench --help": [*clbench, "--help"],
            "clbench validate suites/paper.yaml": [*clbench, "validate", str(ROOT / "suites" / "paper.yaml")],
            "clbench list methods": [*clbench, "list", "methods"],
            "clbench table DIR": [*clbench, "table", str(results)],
            "clbench show DIR/CELL": [*clbench, "show", str(results / cell)],
            "clbench run smoke.yaml (nothing to do)": [*clbench, "run", smoke, "--results", str(results)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(timed(argv, env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times['python -c "import torch"'])
    width = max(map(len, commands))
    print(f"median of {args.runs} runs each (interleaved); goal: ratio <= {GOAL}")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = median / base
        flag = "" if name.startswith("python") else ("  ok" if ratio <= GOAL else "  over goal")
        print(f"{name:{width}s}  {median:6.3f} s  {ratio:5.2f}x import torch{flag}")


if __name__ == "__main__":
    main()

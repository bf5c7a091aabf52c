"""Wall time of the offline demo (suites/demo.yaml), from a fresh results folder each run.

    python bench/demo_time.py [--runs 3]

The demo takes about 5 minutes on 2 CPU cores (56 cells); this prints each run,
the median and the spread. It is a benchmark, not a test: timings depend on
the machine and its load.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--suite", default=str(ROOT / "suites" / "demo.yaml"))
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    times = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "clbench.cli", "run", args.suite, "--results", out],
                           check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
        print(f"run {i + 1}: {times[-1]:.1f} s", flush=True)
    print(f"median {statistics.median(times):.1f} s (min {min(times):.1f}, max {max(times):.1f}) over {len(times)} runs; budget 180 s")


if __name__ == "__main__":
    main()

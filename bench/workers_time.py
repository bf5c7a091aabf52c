"""Wall time of a 4-cell suite run in one process vs with --workers 2 (fresh results folder each run).

    python bench/workers_time.py [--runs 3]

On a machine without GPUs the workers share the CPU cores (each gets
cores / workers threads), so this measures the executor's own cost and how
well two processes use the cores, not a GPU speed-up.
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
sys.path.insert(0, str(ROOT))
from clbench.testing import tiny_suite, write_suite  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    stream = {"dataset": "synthetic", "steps": 4, "num_classes": 20, "train_per_class": 60, "test_per_class": 20, "world_domains": ["clean"]}
    with tempfile.TemporaryDirectory() as tmp:
        suite = tiny_suite([{"name": "finetune", "loss": "ce"}, {"name": "er", "buffer": {"size": 40}}], streams=[stream], seeds=[0, 1])
        suite["model"] = {"arch": "clbench-tiny-32", "pretrained": "tinyworld"}
        suite["train"]["epochs"] = 3
        path = write_suite(Path(tmp) / "four.yaml", suite)
        times = {1: [], 2: []}
        for i in range(args.runs):
            for workers in ((1, 2) if i % 2 == 0 else (2, 1)):
                out = Path(tmp) / f"out-{i}-{workers}"
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "clbench.cli", "run", str(path), "--results", str(out), "--workers", str(workers)],
                               check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times[workers].append(time.perf_counter() - start)
            print(f"run {i + 1}: in-process {times[1][-1]:.1f}s, --workers 2 {times[2][-1]:.1f}s", flush=True)
    ratios = [a / b for a, b in zip(times[1], times[2])]
    print(f"in-process median {statistics.median(times[1]):.1f}s, --workers 2 median {statistics.median(times[2]):.1f}s; "
          f"speed-up {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}) over {len(ratios)} paired runs")


if __name__ == "__main__":
    main()

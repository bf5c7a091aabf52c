"""Wall time of a 4-cell suite: in one process vs --workers 2, Ray (local instance) and submitit's local executor.

    python bench/workers_time.py [--runs 3] [--only inprocess,workers2]

Every run starts from a fresh results folder; the order of the variants
rotates from run to run, and each variant's speed-up is the median of its
paired ratios to the in-process run of the same round. On a machine without
GPUs the workers share the CPU cores (each gets cores / workers threads), so
this measures the executors' own cost (process start-up, imports, Ray's
instance, job files) and how well two processes use the cores, not a GPU
speed-up.
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

VARIANTS = {
    "inprocess": (None, []),
    "workers2": (None, ["--workers", "2"]),
    "ray": ({"name": "ray", "num_cpus": 1}, []),
    "submitit-local": ({"name": "slurm", "cluster": "local", "gpus_per_job": 0, "cpus_per_task": 1, "poll_s": 0.2}, ["--workers", "2"]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants: " + ", ".join(VARIANTS))
    args = ap.parse_args()
    names = ["inprocess"] + [n for n in args.only.split(",") if n != "inprocess"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    cores = os.cpu_count() or 1
    stream = {"dataset": "synthetic", "steps": 4, "num_classes": 20, "train_per_class": 60, "test_per_class": 20, "world_domains": ["clean"]}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in names:
            executor, _ = VARIANTS[name]
            suite = tiny_suite([{"name": "finetune", "loss": "ce"}, {"name": "er", "buffer": {"size": 40}}], streams=[stream], seeds=[0, 1])
            suite["model"] = {"arch": "clbench-tiny-32", "pretrained": "tinyworld"}
            suite["train"]["epochs"] = 3
            if executor:
                suite["executor"] = executor
            paths[name] = write_suite(Path(tmp) / f"{name}.yaml", suite)
        times = {name: [] for name in names}
        for i in range(args.runs):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                out = Path(tmp) / f"out-{i}-{name}"
                # the in-process run gets every core; worker processes get an equal share each
                run_env = dict(env, OMP_NUM_THREADS=str(cores if name == "inprocess" else max(1, cores // 2)))
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "clbench.cli", "run", str(paths[name]), "--results", str(out), *VARIANTS[name][1]],
                               check=True, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - start)
            print(f"run {i + 1}: " + ", ".join(f"{n} {times[n][-1]:.1f}s" for n in names), flush=True)
    base = times["inprocess"]
    print(f"inprocess: median {statistics.median(base):.1f}s")
    for name in names[1:]:
        ratios = [a / b for a, b in zip(base, times[name])]
        print(f"{name}: median {statistics.median(times[name]):.1f}s; speed-up vs in-process {statistics.median(ratios):.2f}x "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f}) over {len(ratios)} paired runs")


if __name__ == "__main__":
    main()

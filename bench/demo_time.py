"""Wall time of the offline demo (suites/demo.yaml), from a fresh results folder each run.

    python bench/demo_time.py [--runs 3]
    python bench/demo_time.py --runs 2 --against 09a7ae5

The demo takes about 4½ minutes on 2 CPU cores (110 cells); this prints each
run, the median and the spread. ``--against REV`` also times the demo of
another commit (its own clbench, methods, suite and shipped weights, from a
``git worktree``), alternating the two so that both see the same machine load,
and prints the ratio of the medians. It is a benchmark, not a test: timings
depend on the machine and its load.
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


def timed_run(tree: Path, suite: Path, env: dict) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "clbench.cli", "run", str(suite), "--results", out],
                       check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def tree_env(tree: Path, packages: Path) -> dict:
    """An environment whose ``clbench`` and ``clbench_methods`` are the ones in ``tree`` (not the installed ones)."""
    link = packages / "clbench_methods"
    if not link.exists():
        link.symlink_to(tree / "methods", target_is_directory=True)
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(tree), str(packages)]))


def summary(label: str, times: list[float]) -> str:
    return f"{label}: median {statistics.median(times):.1f} s (min {min(times):.1f}, max {max(times):.1f}) over {len(times)} runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--suite", default="suites/demo.yaml", help="relative to each tree's root")
    parser.add_argument("--against", metavar="REV", help="also time this commit's demo, alternating with this tree's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"this tree": ROOT}
        if args.against:
            other = Path(scratch) / "against"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(other), args.against], check=True)
            trees[args.against] = other
        envs = {}
        for i, (label, tree) in enumerate(trees.items()):
            (Path(scratch) / f"packages{i}").mkdir()
            envs[label] = tree_env(tree, Path(scratch) / f"packages{i}")
        times = {label: [] for label in trees}
        try:
            for i in range(args.runs):
                for label, tree in (trees.items() if i % 2 == 0 else reversed(trees.items())):
                    times[label].append(timed_run(tree, tree / args.suite, envs[label]))
                    print(f"run {i + 1}, {label}: {times[label][-1]:.1f} s", flush=True)
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[args.against])], check=False)
    for label, ts in times.items():
        print(summary(label, ts))
    if args.against:
        ratio = statistics.median(times["this tree"]) / statistics.median(times[args.against])
        print(f"this tree / {args.against}: {ratio:.2f} (median over median)")


if __name__ == "__main__":
    main()

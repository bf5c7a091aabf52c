"""--workers N: several worker processes share a suite's cells through the per-cell locks."""
import subprocess
import sys
import os

from .test_reliability import records_of, slow_suite


def test_two_workers_give_the_records_of_an_in_process_run(tmp_path):
    suite = slow_suite(tmp_path)
    # the same thread count in every process: CPU float reductions depend on it
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "clbench.cli", "run", str(suite), "--results", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "clbench.cli", "run", str(suite), "--results", str(tmp_path / "two"), "--workers", "2"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert double.returncode == 0, double.stderr
    started = [line.split("] ", 2)[2] for line in double.stderr.splitlines() if line.startswith("[worker ") and line.endswith(" ...")]
    assert len(started) == 4 and len(set(started)) == 4  # every cell started once, across the two workers
    assert {line.split("]")[0] for line in double.stderr.splitlines() if line.startswith("[worker ")} == {"[worker 1", "[worker 2"}
    assert records_of(tmp_path / "two") == records_of(tmp_path / "one") and len(records_of(tmp_path / "one")) == 4
    assert "| finetune (loss=ce) |" in double.stdout  # the parent prints the leaderboard of all workers' records

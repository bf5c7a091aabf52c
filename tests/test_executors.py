"""Executors: worker processes, Ray and submitit give the records of an in-process run, and re-run lost cells.

Every run here is a real ``clbench run`` process on the same 4-cell suite, with
one thread per process (CPU float reductions depend on the thread count).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from .test_reliability import records_of, slow_suite

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")


def clbench_run(suite, results, *args):
    return subprocess.Popen([sys.executable, "-m", "clbench.cli", "run", str(suite), "--results", str(results), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err


def with_executor(tmp_path, executor, name, **keys):
    suite = yaml.safe_load(slow_suite(tmp_path).read_text())
    suite["executor"] = executor
    suite.update(keys)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


RAY = {"name": "ray", "num_cpus": 1, "local_cpus": 2}
SLURM_LOCAL = {"name": "slurm", "cluster": "local", "gpus_per_job": 0, "cpus_per_task": 1, "poll_s": 0.2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process run's records, which every executor must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    finish(clbench_run(slow_suite(tmp), tmp / "out"))
    records = records_of(tmp / "out")
    assert len(records) == 4
    return records


def started_lines(err):
    return [line for line in err.splitlines() if line.startswith("[") and line.endswith(" ...")]


def kill_mid_cell(proc, results, sig=signal.SIGKILL, deadline_s=180):
    """Once some cell has saved an experience, signal the process that holds that cell's lock; returns the cell id."""
    checkpoints = results / "checkpoints"
    deadline = time.time() + deadline_s
    while True:
        assert proc.poll() is None and time.time() < deadline, "the run ended before any checkpoint was written"
        saved = list(checkpoints.glob("*.pt")) if checkpoints.is_dir() else []
        if saved:
            cell_id = saved[0].stem
            pid = int((results / "locks" / f"{cell_id}.lock").read_text())
            os.kill(pid, sig)
            return cell_id, pid
        time.sleep(0.01)


def assert_resumed(results, cell_id):
    record = json.loads((results / "records" / f"{cell_id}.json").read_text())
    assert record["status"] == "done" and record["cost"]["resumed_at_experience"] >= 1


# --- same records as in-process ------------------------------------------------

def steps_logged(results):
    """(cell_id, step) rows of the csv logger, which runs in the driver."""
    import csv

    with open(results / "steps.csv", newline="") as f:
        return sorted((row["cell_id"], int(row["step"])) for row in csv.DictReader(f))


def test_two_workers_give_the_records_of_an_in_process_run(tmp_path, reference):
    out, err = finish(clbench_run(with_executor(tmp_path, "local", "logged", loggers=["csv"]), tmp_path / "two", "--workers", "2"))
    starts = started_lines(err)
    assert len(starts) == 4 and len({line.split("] ", 1)[1].rsplit(" (", 1)[0] for line in starts}) == 4  # each cell started once
    assert len({line.rsplit("pid ", 1)[1] for line in starts}) == 2  # by two worker processes, shown in one display
    assert records_of(tmp_path / "two") == reference
    assert "| finetune (loss=ce) |" in out
    assert steps_logged(tmp_path / "two") == sorted((cid, step) for cid in reference for step in range(4))  # every experience once


@pytest.fixture
def ray_head(tmp_path):
    """A real Ray cluster head on this machine (what `ray start --head` gives a user), stopped afterwards."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = [os.path.join(os.path.dirname(sys.executable), "ray")]
    env = dict(ENV, RAY_AUTH_MODE="disabled")
    subprocess.run([*ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_executor_on_a_running_cluster_gives_the_records_of_an_in_process_run(tmp_path, reference, ray_head, monkeypatch):
    # joining a cluster: records come back to the driver, which writes them (no shared file system assumed)
    monkeypatch.setitem(ENV, "RAY_AUTH_MODE", "disabled")
    out, err = finish(clbench_run(with_executor(tmp_path, {**RAY, "address": ray_head}, "ray", loggers=["csv"]), tmp_path / "ray"))
    assert "(ray executor)" in err and len(started_lines(err)) == 4
    assert records_of(tmp_path / "ray") == reference
    assert not (tmp_path / "ray" / "locks").exists()  # the tasks kept their locks and checkpoints on their node
    assert steps_logged(tmp_path / "ray") == sorted((cid, step) for cid in reference for step in range(4))


def test_an_unreachable_ray_cluster_is_one_line(tmp_path, capsys, monkeypatch):
    import ray

    from clbench.cli import main

    def unreachable(address=None, **kw):  # what ray.init raises after its retries (30 s for a real dead address)
        raise ConnectionError(f"ray client connection timeout\nCould not connect to {address}")

    monkeypatch.setattr(ray, "init", unreachable)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(with_executor(tmp_path, {"name": "ray", "address": "ray://10.0.0.9:10001"}, "r")), "--results", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: executor 'ray': cannot join the Ray cluster at ray://10.0.0.9:10001 (ConnectionError: Could not connect to "
        "ray://10.0.0.9:10001); check executor.address or $RAY_ADDRESS, and that this machine has the cluster's auth token")


def test_submitit_local_executor_gives_the_records_of_an_in_process_run(tmp_path, reference):
    out, err = finish(clbench_run(with_executor(tmp_path, SLURM_LOCAL, "slurm"), tmp_path / "slurm", "--workers", "2"))
    assert "submitted 2 job(s)" in err and len(started_lines(err)) == 4
    assert records_of(tmp_path / "slurm") == reference
    assert not (tmp_path / "slurm" / "events").exists()  # the progress channel is cleaned up


# --- lost cells are re-run -----------------------------------------------------

def test_killed_worker_cell_is_requeued_and_resumes(tmp_path, reference):
    results = tmp_path / "out"
    proc = clbench_run(slow_suite(tmp_path), results, "--workers", "2")
    cell_id, pid = kill_mid_cell(proc, results)
    out, err = finish(proc)
    assert "died (killed by SIGKILL); re-queued" in err
    assert_resumed(results, cell_id)
    assert records_of(results) == reference


def test_cell_of_a_killed_ray_worker_is_rerun(tmp_path, reference):
    results = tmp_path / "out"
    proc = clbench_run(with_executor(tmp_path, RAY, "ray"), results)
    cell_id, pid = kill_mid_cell(proc, results)
    out, err = finish(proc)
    assert "after its process was lost" in err
    assert_resumed(results, cell_id)
    assert records_of(results) == reference


def test_preempted_slurm_job_is_requeued_and_resumes(tmp_path, reference):
    results = tmp_path / "out"
    proc = clbench_run(with_executor(tmp_path, SLURM_LOCAL, "slurm"), results, "--workers", "2")
    cell_id, pid = kill_mid_cell(proc, results, sig=signal.SIGUSR2)  # what Slurm sends before pre-emption or the time limit
    out, err = finish(proc)
    assert "after its process was lost" in err
    assert_resumed(results, cell_id)
    assert records_of(results) == reference


def test_a_cell_that_keeps_losing_its_worker_fails_and_retry_resumes_it(tmp_path, reference):
    suite = with_executor(tmp_path, {"name": "local", "workers": 2, "max_retries": 0}, "noretry")
    results = tmp_path / "out"
    proc = clbench_run(suite, results)
    cell_id, pid = kill_mid_cell(proc, results)
    proc.communicate(timeout=600)
    assert proc.returncode == 1  # the others finished; the lost one has a failed record
    lost = json.loads((results / "records" / f"{cell_id}.json").read_text())
    assert lost["status"] == "failed" and lost["error"].startswith("WorkerDied: worker") and "--retry-failed" in lost["error"]
    finish(clbench_run(suite, results, "--retry-failed"))
    assert_resumed(results, cell_id)
    assert records_of(results) == reference


# --- options, missing engines, the file channel ----------------------------------

def test_executor_options_come_from_the_suite_and_do_not_change_cell_ids(tmp_path, plugins):
    from clbench.suite import load_suite

    plain = load_suite(slow_suite(tmp_path), plugins)
    on_ray = load_suite(with_executor(tmp_path, {"name": "ray", "num_gpus": 0.5, "address": "auto"}, "r"), plugins)
    assert on_ray.executor == "ray" and on_ray.executor_options.num_gpus == 0.5 and on_ray.executor_options.address == "auto"
    assert on_ray.executor_options.max_retries == 3  # defaults fill the rest
    assert [c.cell_id for c in on_ray.cells] == [c.cell_id for c in plain.cells]


def test_slurm_without_slurm_commands_says_what_to_do(tmp_path, monkeypatch, capsys):
    from clbench.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(with_executor(tmp_path, {"name": "slurm"}, "s")), "--results", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "no Slurm commands (srun, sbatch) on this machine" in capsys.readouterr().err


@pytest.mark.parametrize("executor,module,extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_a_missing_engine_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys, executor, module, extra):
    from clbench.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were not installed
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(slow_suite(tmp_path)), "--results", str(tmp_path / "out"), "--executor", executor])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert err[-1] == f"error: executor '{extra}' needs the {module} package; pip install 'clbench[{extra}]'"
    assert not (tmp_path / "out" / "records").exists() or not list((tmp_path / "out" / "records").glob("*.json"))


def test_event_files_deliver_whole_lines_once(tmp_path):
    from clbench.executors.event_files import EventReader, EventWriter

    folder = tmp_path / "events" / "run1"
    write, reader = EventWriter(folder, "abc"), EventReader(folder)
    assert reader.read() == []  # nothing yet, not even a folder
    write({"event": "started", "cell_id": "abc"})
    with open(folder / "abc.jsonl", "ab") as f:
        f.write(b'{"event": "experience", "cell_id": "abc", "st')  # a writer caught mid-line
    assert reader.read() == [{"event": "started", "cell_id": "abc"}]
    with open(folder / "abc.jsonl", "ab") as f:
        f.write(b'ep": 0}\n')
    assert reader.read() == [{"event": "experience", "cell_id": "abc", "step": 0}]
    assert reader.read() == []
    reader.remove()
    assert not (tmp_path / "events").exists()


def test_slurm_cells_go_out_as_one_array_with_the_suites_sbatch_options(tmp_path, monkeypatch, plugins):
    """Submission against a stand-in ``sbatch`` that records its call: the script Slurm would get."""
    import submitit

    from clbench.cell_task import CellTask
    from clbench.executors.slurm_jobs import SlurmCellJob, SlurmExecutor, SlurmOptions
    from clbench.suite import load_suite

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\necho "Submitted batch job 4242"\n')
    (bin_dir / "sbatch").chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    options = SlurmOptions(partition="gpu", account="lab", qos="high", time_min=720, gpus_per_job=1, cpus_per_task=10, mem_gb=64,
                           array_parallelism=3, setup=["module load cuda/12.4"], additional={"exclude": "node12"})
    executor = SlurmExecutor(options)._executor(submitit, tmp_path / "slurm")
    cells = load_suite(slow_suite(tmp_path), plugins).cells
    jobs = executor.map_array(SlurmCellJob(str(tmp_path / "events")), [CellTask(c, str(tmp_path / "out")) for c in cells])
    assert [job.job_id for job in jobs] == ["4242_0", "4242_1", "4242_2", "4242_3"]
    assert len((tmp_path / "calls").read_text().splitlines()) == 1  # one sbatch call for the whole grid
    script = next((tmp_path / "slurm").rglob("*.sh")).read_text()
    for line in ["#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --time=720",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=10", "#SBATCH --mem=64GB", "#SBATCH --array=0-3%3",
                 "#SBATCH --exclude=node12", "module load cuda/12.4", "#SBATCH --signal=USR2@"]:
        assert line in script, line
    # cells of train.devices: 2 go out as their own array, with twice the GPUs and CPUs per job (docs/distributed.md)
    from clbench.executors.slurm_jobs import job_resources

    for old in (tmp_path / "slurm").rglob("*.sh"):
        old.unlink()
    executor.update_parameters(**job_resources(options, 2))
    executor.map_array(SlurmCellJob(str(tmp_path / "events")), [CellTask(c, str(tmp_path / "out")) for c in cells[:1]])
    script = next((tmp_path / "slurm").rglob("*.sh")).read_text()
    assert "#SBATCH --gpus-per-node=2" in script and "#SBATCH --cpus-per-task=20" in script


def test_workers_that_cannot_start_stop_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    from clbench.cli import main

    monkeypatch.setattr(sys, "executable", "/bin/false")  # every worker exits 1 before taking a cell
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(slow_suite(tmp_path)), "--results", str(tmp_path / "out"), "--workers", "2"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: worker processes exit before taking a cell (exit code 1)")

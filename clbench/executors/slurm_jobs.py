"""slurm: every cell a Slurm job (job arrays), submitted and watched through submitit.

The suite says how big a job is (partition, time, GPUs, CPUs, memory, account,
QoS, extra sbatch options). The results folder must be on a file system every
node shares: jobs write records and per-experience checkpoints there. When
Slurm pre-empts a job or its time runs out, submitit requeues it (up to
``max_requeues`` times) and the cell resumes from its last saved experience; a
job that dies otherwise (node failure, out of memory) is resubmitted
``max_retries`` times before its cell gets a failed record. ``cluster: local``
runs the same jobs through submitit's local executor on this machine -- for
trying a setup, and for tests. The driver stays up until the jobs end and
cancels them when interrupted; the cells' checkpoints stay.
"""
from __future__ import annotations

import shutil
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from clbench import hookimpl
from clbench.errors import UserError, brief

from . import Executor, ExecutorOptions, require
from .event_files import EventReader, EventWriter


class SlurmOptions(ExecutorOptions):
    cluster: Literal["slurm", "local"] = Field("slurm", description="local: submitit's local executor on this machine")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = Field(240, ge=1, description="time limit per job, minutes")
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_task: int = Field(8, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    array_parallelism: int = Field(256, ge=1, description="jobs of the array running at once (--workers overrides)")
    max_requeues: int = Field(3, ge=0, description="requeues after pre-emption or time-out; each resumes from the last checkpoint")
    max_retries: int = Field(1, ge=0, description="resubmissions of a job that died without a record")
    setup: list[str] = Field(default_factory=list, description="shell lines run before each job, e.g. 'module load cuda'")
    additional: dict[str, Any] = Field(default_factory=dict, description="extra sbatch options, e.g. {exclude: node12}")
    folder: str | None = Field(None, description="submitit's job files and logs (default RESULTS/slurm)")
    poll_s: float = Field(5.0, gt=0, description="seconds between looks at the jobs")


def job_resources(options: SlurmOptions, devices: int) -> dict:
    """A job for a cell of ``devices`` ranks (train.devices): that many times the GPUs and CPUs, on one node, whose
    ranks torchrun starts inside the job (docs/distributed.md)."""
    return {"gpus_per_node": options.gpus_per_job * devices, "cpus_per_task": options.cpus_per_task * devices}


class SlurmCellJob:
    """What a job runs: one cell. ``checkpoint`` makes submitit requeue it on pre-emption or time-out."""

    def __init__(self, events_folder: str):
        self.events_folder = events_folder

    def __call__(self, task):
        from clbench.cell_task import run_task

        return run_task(task, EventWriter(self.events_folder, task.cell.cell_id))

    def checkpoint(self, task):
        # the cell's own per-experience checkpoint holds its state; run the same task again to resume from it
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, task)


class SlurmExecutor(Executor):
    name = "slurm"
    Options = SlurmOptions

    def __init__(self, options: SlurmOptions | None = None, workers: int | None = None):
        self.options = options or SlurmOptions()
        self.workers = workers

    def _executor(self, submitit, folder: Path):
        o = self.options
        if o.cluster == "slurm" and shutil.which("srun") is None:
            raise UserError("executor 'slurm': no Slurm commands (srun, sbatch) on this machine; run clbench on a login node, "
                            "or set executor.cluster: local to try the jobs here")
        executor = submitit.AutoExecutor(folder=folder, cluster=o.cluster, slurm_max_num_timeout=o.max_requeues,
                                         local_max_num_timeout=o.max_requeues)
        params = dict(name="clbench", timeout_min=o.time_min, gpus_per_node=o.gpus_per_job, cpus_per_task=o.cpus_per_task,
                      tasks_per_node=1, nodes=1, mem_gb=o.mem_gb)
        if o.cluster == "slurm":
            params.update(slurm_partition=o.partition, slurm_account=o.account, slurm_qos=o.qos, slurm_constraint=o.constraint,
                          slurm_array_parallelism=self.workers or o.array_parallelism, slurm_setup=o.setup or None,
                          slurm_additional_parameters=o.additional or None)
        else:
            params.update(local_setup=o.setup or None)
        executor.update_parameters(**params)
        return executor

    def run(self, grid) -> None:
        submitit = require("submitit", "slurm")
        o = self.options
        folder = Path(o.folder) if o.folder else grid.results_dir / "slurm"
        events = grid.results_dir.resolve() / "events" / uuid.uuid4().hex[:12]
        executor = self._executor(submitit, folder)
        job_fn = SlurmCellJob(str(events))
        reader = EventReader(events)
        # Slurm throttles an array itself; the local executor would start every job at once, so feed it
        limit = len(grid.cells) if o.cluster == "slurm" else (self.workers or o.array_parallelism)
        todo, running, attempts = deque(grid.cells), {}, Counter()

        def submit():
            batch = [todo.popleft() for _ in range(min(len(todo), limit - len(running)))]
            for devices in sorted({c.config["train"].get("devices", 1) for c in batch}):  # one array per size of job
                group = [c for c in batch if c.config["train"].get("devices", 1) == devices]
                executor.update_parameters(**job_resources(o, devices))
                jobs = executor.map_array(job_fn, [grid.task(c) for c in group])
                for cell, job in zip(group, jobs):
                    running[job.job_id] = (cell, job)
                grid.note(f"submitted {len(group)} job(s): {jobs[0].job_id}" + (f" … {jobs[-1].job_id}" if len(jobs) > 1 else "")
                          + f"; logs in {folder}")

        try:
            submit()
            while running:
                time.sleep(o.poll_s)
                for message in reader.read():
                    grid.event(message)
                for job_id, (cell, job) in list(running.items()):
                    if not job.done():
                        continue
                    del running[job_id]
                    for message in reader.read():
                        grid.event(message)
                    try:
                        outcome = job.result()
                    except Exception as exc:  # the job died: node failure, out of memory, cancelled, requeued too often
                        attempts[cell.cell_id] += 1
                        reason = brief(exc)
                        if attempts[cell.cell_id] <= o.max_retries:
                            grid.retrying(cell, f"job {job_id} ended without a record ({reason}); resubmitted")
                            todo.appendleft(cell)
                        else:
                            grid.lost(cell, f"JobDied: job {job_id} ended without a record {attempts[cell.cell_id]} times ({reason}); "
                                            "rerun with --retry-failed to resume it")
                        continue
                    grid.finish(outcome)
                submit()
        except BaseException:
            for _, job in running.values():
                try:
                    job.cancel(check=False)
                except Exception:
                    pass
            raise
        finally:
            reader.remove()


@hookimpl
def clbench_add_executors(register):
    register(SlurmExecutor)

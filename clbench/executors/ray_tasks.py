"""ray: every cell a Ray task, on a running Ray cluster or on a local instance started for the run.

Ray places tasks by the resources the suite asks for (``num_gpus``,
``num_cpus``, ``memory_gb``) and re-runs a task whose worker process or node
died (``max_retries``). Records reach the results folder one of two ways:
``results: shared`` -- every node sees the results folder at the same path,
tasks write records and checkpoints there, and a re-run resumes from the last
experience saved; ``results: driver`` -- no shared file system: tasks keep
checkpoints in the node's temp folder and return records to the driver, which
writes them. ``auto`` picks shared for a local instance, driver for a cluster.
Progress events come home through a Ray queue, so one display shows every cell.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from collections import deque
from typing import Literal

from pydantic import Field

from clbench import hookimpl
from clbench.errors import UserError, brief

from . import Executor, ExecutorOptions, require


class RayOptions(ExecutorOptions):
    address: str | None = Field(None, description="cluster to join ('auto': the one started on this machine, 'head:6379', "
                                                   "'ray://head:10001'); default $RAY_ADDRESS, else a new local instance")
    num_cpus: float = Field(1, ge=0, description="CPUs per cell")
    num_gpus: float = Field(0, ge=0, description="GPUs per cell (fractions share a GPU)")
    memory_gb: float | None = Field(None, gt=0, description="memory per cell, for Ray's scheduler")
    max_retries: int = Field(3, ge=0, description="re-runs of a cell whose worker process or node died")
    results: Literal["auto", "shared", "driver"] = "auto"
    local_cpus: int | None = Field(None, ge=1, description="CPUs of a local instance (default: all)")
    local_gpus: int | None = Field(None, ge=0, description="GPUs of a local instance (default: all)")
    runtime_env: dict | None = Field(None, description="Ray runtime_env for the tasks, e.g. {pip: [my-clbench-plugin]}")
    log_to_driver: bool = Field(False, description="print the tasks' own output here (it interleaves with progress)")


def run_on_ray(task, events, scratch: str | None):
    """The Ray task: run one cell on whichever node Ray chose, events through the queue."""
    from clbench.cell_task import run_task

    if scratch is not None:  # no shared folder: checkpoints and locks on this node, the record goes home
        task = dataclasses.replace(task, folder=os.path.join(tempfile.gettempdir(), "clbench", scratch), write_record=False)
    return run_task(task, events.put)


class RayExecutor(Executor):
    name = "ray"
    Options = RayOptions

    def __init__(self, options: RayOptions | None = None, workers: int | None = None):
        self.options = options or RayOptions()
        self.workers = workers  # the most cells in flight; None: as many as the cluster's resources allow

    def _connect(self, ray) -> bool:
        """Join the cluster or start a local instance; True when this run started it (and stops it)."""
        o = self.options
        if ray.is_initialized():
            return False
        address = o.address or os.environ.get("RAY_ADDRESS")
        common = dict(runtime_env=o.runtime_env, log_to_driver=o.log_to_driver)
        if address:
            try:
                ray.init(address=address, **common)
            except Exception as exc:  # unreachable head, wrong port, missing auth token
                raise UserError(f"executor 'ray': cannot join the Ray cluster at {address} ({brief(exc)}); "
                                "check executor.address or $RAY_ADDRESS, and that this machine has the cluster's auth token") from None
            return False
        try:  # address="local": a fresh instance even when a cluster was started on this machine (join that with address: auto)
            ray.init(address="local", num_cpus=o.local_cpus, num_gpus=o.local_gpus, include_dashboard=False, **common)
        except Exception as exc:
            raise UserError(f"executor 'ray': could not start a local Ray instance ({brief(exc)})") from None
        return True

    def run(self, grid) -> None:
        ray = require("ray", "ray")
        from ray.util.queue import Queue

        o = self.options
        started_here = self._connect(ray)
        shared = o.results == "shared" or (o.results == "auto" and started_here)
        scratch = None if shared else f"{grid.results_dir.name}-{hashlib.sha1(str(grid.results_dir.resolve()).encode()).hexdigest()[:8]}"
        try:
            events = Queue(actor_options={"num_cpus": 0})
            remote = ray.remote(run_on_ray).options(
                num_cpus=o.num_cpus, num_gpus=o.num_gpus, max_retries=o.max_retries, retry_exceptions=False,
                memory=int(o.memory_gb * 2**30) if o.memory_gb else None, name="clbench-cell",
            )
            todo, pending = deque(grid.cells), {}
            limit = self.workers or len(todo)

            def drain():
                while not events.empty():
                    for message in events.get_nowait_batch(events.qsize()):
                        grid.event(message)

            try:
                while todo or pending:
                    while todo and len(pending) < limit:
                        cell = todo.popleft()
                        devices = cell.config["train"].get("devices", 1)  # one task holds all of a cell's ranks
                        placed = remote if devices == 1 else remote.options(num_cpus=o.num_cpus * devices,
                                                                             num_gpus=o.num_gpus * devices)
                        pending[placed.remote(grid.task(cell), events, scratch)] = cell
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
                    drain()
                    for ref in ready:
                        cell = pending.pop(ref)
                        try:
                            outcome = ray.get(ref)
                        except ray.exceptions.RayError as exc:
                            what = ("the task raised" if isinstance(exc, ray.exceptions.RayTaskError)
                                    else f"its worker or node was lost {o.max_retries + 1} times")
                            grid.lost(cell, f"{type(exc).__name__}: {what} ({brief(exc)}); rerun with --retry-failed to resume it")
                            continue
                        grid.finish(outcome)
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        finally:
            if started_here:
                ray.shutdown()


@hookimpl
def clbench_add_executors(register):
    register(RayExecutor)

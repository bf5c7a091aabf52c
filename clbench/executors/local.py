"""local: run cells on this machine, in this process or in N worker processes.

With ``--workers N`` (N > 1) the driver starts N worker processes and hands
them cells from one queue, one at a time; each worker gets one GPU through
``CUDA_VISIBLE_DEVICES`` when there are N GPUs, else an equal share of the
CPU threads. A worker that dies mid-cell (killed, out of memory) is replaced
and its cell goes back to the front of the queue; it resumes from its last
per-experience checkpoint. After ``max_retries`` deaths the cell gets a
failed record (``--retry-failed`` resumes it later) and the grid goes on.
"""
from __future__ import annotations

import base64
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections import Counter, deque

from pydantic import Field

from clbench import hookimpl
from clbench.errors import UserError

from . import Executor, ExecutorOptions


class LocalOptions(ExecutorOptions):
    workers: int = Field(1, ge=1, description="worker processes (--workers overrides); 1 runs cells in this process")
    max_retries: int = Field(2, ge=0, description="times a cell is re-queued after its worker died")


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    def __init__(self, number: int, env: dict, inbox: queue.Queue):
        self.number = number
        self.cell = None
        self.ready = False
        self.proc = subprocess.Popen([sys.executable, "-m", "clbench.executors.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        threading.Thread(target=self._read_channel, args=(inbox,), daemon=True).start()
        threading.Thread(target=self._read_log, args=(inbox,), daemon=True).start()

    def _read_channel(self, inbox):
        for line in self.proc.stdout:
            try:
                inbox.put((self, "message", json.loads(line)))
            except json.JSONDecodeError:
                inbox.put((self, "log", line.decode(errors="replace").rstrip()))
        inbox.put((self, "gone", None))

    def _read_log(self, inbox):
        for line in self.proc.stderr:
            inbox.put((self, "log", line.decode(errors="replace").rstrip()))

    def give(self, cell, task) -> None:
        self.cell = cell
        self.send(base64.b64encode(pickle.dumps(task)) + b"\n")

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died; its channel's end reports that

    def stop(self) -> None:
        self.send(b"\n")


class LocalExecutor(Executor):
    name = "local"
    Options = LocalOptions

    def __init__(self, options: LocalOptions | None = None, workers: int | None = None):
        self.options = options or LocalOptions()
        self.workers = workers or self.options.workers

    def run(self, grid) -> None:
        n = 1 if self.workers == 1 or len(grid.cells) <= 1 else min(self.workers, len(grid.cells))
        several = any(c.config["train"].get("devices", 1) > 1 for c in grid.cells)  # asks torch only then
        self.per_worker = self._check_devices(grid.cells, n, _gpu_ids()) if several else 1
        if n == 1:
            for cell in grid.cells:
                grid.run_here(cell)
            return
        self._run_workers(grid, n)

    @staticmethod
    def _check_devices(cells, n: int, gpus: list[str]) -> int:
        """GPUs per worker: the most ``train.devices`` of a GPU cell; UserError, before any cell, when the machine
        has fewer than ``n`` workers need (CPU cells run their ranks as processes and need none)."""
        on_gpu = [c for c in cells if c.config["train"].get("device", "auto") != "cpu" and gpus]
        need = max((c.config["train"].get("devices", 1) for c in on_gpu), default=1)
        if need > 1 and len(gpus) < n * need:
            workers = f"{n} workers × " if n > 1 else ""
            raise UserError(f"train.devices: {need} needs {workers}{need} GPUs, and this machine shows {len(gpus)} "
                            f"(CUDA_VISIBLE_DEVICES); lower train.devices{' or --workers' if n > 1 else ''}")
        return need

    def _env(self, number: int, n: int, gpus: list[str]) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))  # share the CPU, don't oversubscribe it
        k = getattr(self, "per_worker", 1)  # a block of k GPUs per worker for cells of k devices
        if len(gpus) >= n * k:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[(number - 1) * k:number * k])
        return env

    def _run_workers(self, grid, n: int) -> None:
        gpus = _gpu_ids()
        todo, deaths = deque(grid.cells), Counter()
        inbox: queue.Queue = queue.Queue()
        alive = {i: _Worker(i, self._env(i, n, gpus), inbox) for i in range(1, n + 1)}
        errors: list[str] = []
        failed_starts = 0

        def next_cell(worker):
            if todo:
                cell = todo.popleft()
                worker.give(cell, grid.task(cell))
            else:
                worker.cell = None
                worker.stop()

        try:
            while alive:
                try:
                    worker, kind, payload = inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if kind == "log":
                    if payload.startswith("error: "):
                        errors.append(payload[len("error: "):])
                    grid.note(f"[worker {worker.number}] {payload}")
                elif kind == "message" and payload["event"] == "ready":
                    worker.ready = True
                    next_cell(worker)
                elif kind == "message" and payload["event"] == "outcome":
                    worker.cell = None
                    grid.finish(payload["outcome"])
                    next_cell(worker)
                elif kind == "message":
                    grid.event(payload)
                elif kind == "gone":
                    code = worker.proc.wait()
                    del alive[worker.number]
                    if code == 2:
                        raise UserError(errors[-1] if errors else f"worker {worker.number} stopped on bad input")
                    if not worker.ready:
                        failed_starts += 1
                        if failed_starts >= 3:  # a broken environment: replacing workers would loop forever
                            raise UserError(f"worker processes exit before taking a cell ({describe_exit(code)}); "
                                            "their output is above; 'python -m clbench.executors.worker' shows it too")
                    cell = worker.cell
                    if cell is not None:
                        deaths[cell.cell_id] += 1
                        why = f"worker {worker.number} died ({describe_exit(code)})"
                        if deaths[cell.cell_id] <= self.options.max_retries:
                            todo.appendleft(cell)
                            grid.retrying(cell, f"{why}; re-queued, it resumes from its last checkpoint")
                        else:
                            grid.lost(cell, f"WorkerDied: {why}, {deaths[cell.cell_id]} times; rerun with --retry-failed to resume it")
                    if todo and len(alive) < n:
                        alive[worker.number] = _Worker(worker.number, self._env(worker.number, n, gpus), inbox)
        except BaseException:
            for worker in alive.values():
                if worker.proc.poll() is None:
                    worker.proc.terminate()  # workers save nothing half-done: renames finish, checkpoints stay
            for worker in alive.values():
                try:
                    worker.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.proc.kill()
            raise


@hookimpl
def clbench_add_executors(register):
    register(LocalExecutor)

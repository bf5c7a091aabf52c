"""local: run cells on this machine, in this process or in N worker processes.

With ``--workers N`` (N > 1) the executor starts N ``clbench run`` processes on
the same suite and results folder, one GPU each when there are enough GPUs
(``CUDA_VISIBLE_DEVICES``). They share the cells through the per-cell locks
and resume through the per-experience checkpoints, so a worker that dies
costs at most the experience it was in: its cell is taken up by the next run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

from clbench import hookimpl
from clbench.errors import UserError


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = workers

    def run(self, cells, run_one, worker_args: list[str] | None = None) -> None:
        if self.workers == 1 or len(cells) <= 1 or worker_args is None:
            for cell in cells:
                run_one(cell)
            return
        self._run_workers(worker_args, min(self.workers, len(cells)))

    def _run_workers(self, worker_args: list[str], n: int) -> None:
        gpus = _gpu_ids()
        procs, errors = [], []
        for i in range(n):
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))  # share the CPU, don't oversubscribe it
            if len(gpus) >= n:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i]
            proc = subprocess.Popen([sys.executable, "-m", "clbench.cli", "run", *worker_args, "--workers", "1"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            procs.append(proc)

        def forward(i, proc):
            for line in proc.stderr:
                if line.startswith("error: "):
                    errors.append(line.strip()[len("error: "):])
                sys.stderr.write(f"[worker {i + 1}] {line}")

        threads = [threading.Thread(target=forward, args=(i, p), daemon=True) for i, p in enumerate(procs)]
        for t in threads:
            t.start()
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            raise
        for t in threads:
            t.join(timeout=5)
        if any(code == 2 for code in codes):
            raise UserError(errors[0] if errors else "a worker stopped on bad input")
        if any(code == 130 for code in codes):
            raise KeyboardInterrupt


@hookimpl
def clbench_add_executors(register):
    register("local", LocalExecutor)

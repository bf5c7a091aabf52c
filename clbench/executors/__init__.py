"""Executors decide where a suite's cells run; each is a plugin.

An executor class has a ``name``, an ``Options`` pydantic model (the keys a
suite may give under ``executor:``, validated when the suite loads) and
``run(grid)``. ``grid`` is the driver's ``clbench.grid.GridRun``: its
``cells`` are the cells to run; ``grid.task(cell)`` is a picklable
``clbench.cell_task.CellTask`` that ``clbench.cell_task.run_task`` runs in any
process; ``grid.event(message)`` and ``grid.finish(outcome)`` take back what
the task sends and returns; ``grid.run_here(cell)`` runs a cell in-process.
``run`` returns when every cell has ended, been skipped or been given up with
``grid.lost(cell, why)``.

Engines for other machines (Ray, Slurm) are optional packages: import them
inside the executor with ``require`` so a missing one is a one-line error.
"""
from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict

from ..errors import require_extra


class ExecutorOptions(BaseModel):
    """Base for an executor's suite keys: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class Executor(Protocol):
    name: str
    Options: type[ExecutorOptions]

    def __init__(self, options: ExecutorOptions, workers: int | None = None): ...

    def run(self, grid) -> None: ...


def require(module: str, extra: str):
    """Import an optional engine, or stop with the pip command that installs it."""
    return require_extra(module, extra, f"executor '{extra}'")

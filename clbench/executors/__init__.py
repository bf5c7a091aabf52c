"""Executors decide where a suite's cells run; each is a plugin.

An executor is a subclass of ``Executor`` with a ``name``, an ``Options``
pydantic model (the keys a suite may give under ``executor:``, validated when
the suite loads) and ``run(grid)``, registered as ``register(MyExecutor)`` in a
``clbench_add_executors`` hookimpl. ``grid`` is the driver's ``clbench.grid.GridRun``: its
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

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ..errors import require_extra


class ExecutorOptions(BaseModel):
    """Base for an executor's suite keys: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class Executor:
    """Base class of every executor: built once per ``clbench run`` as ``cls(options, workers=N)``.

    ``options`` is the suite's validated ``Options`` (None: the defaults); ``workers`` is
    ``clbench run --workers`` (None when not given), which an executor reads as the most
    cells in flight.
    """

    #: the name suites use (``executor: NAME``); unique across installed plugins
    name: ClassVar[str] = ""
    #: the suite keys under ``executor:``
    Options: ClassVar[type[ExecutorOptions]] = ExecutorOptions

    def __init__(self, options: ExecutorOptions | None = None, workers: int | None = None):
        self.options = options or self.Options()
        self.workers = workers

    def run(self, grid) -> None:
        """Run every cell of ``grid.cells`` (a ``clbench.grid.GridRun``); return when each has ended or been given up."""
        raise NotImplementedError(f"executor '{self.name}' must implement run(grid)")


def require(module: str, extra: str):
    """Import an optional engine, or stop with the pip command that installs it."""
    return require_extra(module, extra, f"executor '{extra}'")

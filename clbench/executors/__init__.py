"""Executors decide where a suite's cells run; each is a plugin.

An executor gets the cells still to run and a function that runs one cell
and stores its record; it returns when every cell has been attempted.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

from ..suite import Cell


class Executor(Protocol):
    name: str

    def __init__(self, workers: int = 1): ...

    def run(self, cells: Sequence[Cell], run_one: Callable[[Cell], dict], worker_args: list[str] | None = None) -> None:
        """Attempt every cell: call ``run_one(cell)`` here, or start processes that run
        ``clbench run <worker_args>`` (the same suite and results folder) elsewhere."""

"""One cell as a self-contained task: the unit every executor ships, wherever it runs.

A task carries everything a fresh process needs (the resolved cell and where
its results folder is as that process sees it). Running it takes the cell's
lock, re-checks that nobody finished it meanwhile, runs it with checkpoints
(so a re-run resumes), and returns an outcome that holds the record. Bad input
inside the cell comes back as ``user_error`` rather than an exception, so it
crosses process boundaries unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .checkpoint import CellCheckpoint
from .distributed import world
from .errors import UserError
from .events import started
from .locks import cell_lock
from .results import ResultStore
from .suite import Cell


@dataclass(frozen=True)
class CellTask:
    cell: Cell
    folder: str  # results folder as the running process sees it: locks, checkpoints and (if write_record) records
    write_record: bool = True  # False: the driver writes the returned record (no shared file system)
    retry_failed: bool = False
    keep_checkpoints: bool = False


def run_task(task: CellTask, send: Callable[[dict], None], plugins=None, on_experience=None) -> dict:
    """Run the task here; ``send`` carries events home. Returns the outcome dict:
    ``cell_id``, ``ran`` (False: done, failed or running elsewhere, ``why`` says which),
    ``record``, ``written`` (the record is on disk already) and ``user_error``."""
    from .plugins import get_plugins
    from .runner import run_cell

    plugins = plugins or get_plugins()
    cell, folder = task.cell, Path(task.folder)
    outcome = {"cell_id": cell.cell_id, "ran": False, "why": None, "record": None, "written": False, "user_error": None}
    store = ResultStore(folder)
    with cell_lock(folder / "locks", cell.cell_id) as mine:
        now = store.status(cell.cell_id)  # another process may have finished it meanwhile
        if not mine or now == "done" or (now == "failed" and not task.retry_failed):
            outcome["why"] = "running in another process" if not mine else f"{now} by another process"
            return outcome
        send(started(cell.cell_id))
        try:
            devices = cell.config["train"].get("devices", 1)
            if devices > 1 and world()[1] == 1:  # the cell's own group of ranks, launched on this node
                from .events import ExperienceEnd
                from .rank_group import run_cell_on_ranks

                report = (lambda m: on_experience(ExperienceEnd.from_message(cell, m))) if on_experience else send
                record = run_cell_on_ranks(cell, devices, folder / "checkpoints", report)
            else:
                record = run_cell(cell, plugins, on_experience=on_experience or (lambda report: send(report.message())),
                                  checkpoints=folder / "checkpoints")
        except UserError as exc:
            outcome["user_error"] = str(exc)
            return outcome
        if task.write_record:
            store.write(record)
        if record["status"] == "done" and not task.keep_checkpoints:
            CellCheckpoint(folder / "checkpoints", cell.cell_id).remove()
    outcome.update(ran=True, record=record, written=task.write_record)
    return outcome

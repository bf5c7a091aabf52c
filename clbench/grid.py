"""The driver's side of ``clbench run``: what happens here when a cell starts, reports or ends, wherever it runs.

Executors move cells and their events around; this object is the one place
that turns them into progress lines, hook calls (loggers), records on disk
and the run's counts, so every executor behaves the same to the user.
"""
from __future__ import annotations

import os
from pathlib import Path

from .cell_task import CellTask, run_task
from .errors import UserError
from .events import ExperienceEnd


class GridRun:
    def __init__(self, cells, *, suite_file, results_dir: Path, store, plugins, progress,
                 retry_failed: bool = False, keep_checkpoints: bool = False):
        self.cells = list(cells)
        self.by_id = {c.cell_id: c for c in self.cells}
        self.suite_file = suite_file
        self.results_dir = Path(results_dir)
        self.store = store
        self.plugins = plugins
        self.progress = progress
        self.retry_failed = retry_failed
        self.keep_checkpoints = keep_checkpoints
        self.failed = 0
        self.elsewhere = 0
        self.finished = 0
        self.running: set[str] = set()

    # --- what executors ship -------------------------------------------------
    def task(self, cell, folder: Path | str | None = None, write_record: bool = True) -> CellTask:
        """The cell as a task; ``folder`` is the results folder as the running process will see it."""
        return CellTask(cell, str(folder or self.results_dir.resolve()), write_record, self.retry_failed, self.keep_checkpoints)

    def run_here(self, cell) -> None:
        """Run a cell in this process (the live learner reaches the hooks)."""
        self.finish(run_task(self.task(cell), self.event, self.plugins, on_experience=self._experience_end))

    # --- what comes back -----------------------------------------------------
    def event(self, message: dict) -> None:
        """An event a running cell sent (see clbench.events)."""
        cell = self.by_id.get(message.get("cell_id"))
        if cell is None:
            return
        if message["event"] == "started":
            where = None if message.get("pid") == os.getpid() else message.get("where")
            if cell.cell_id in self.running:  # the engine re-ran it after its process was lost
                self.progress.cell_retrying(cell, f"restarted on {where} after its process was lost; it resumes from its last checkpoint")
            self.running.add(cell.cell_id)
            self.progress.cell_started(cell, where)
        elif message["event"] == "experience":
            self._experience_end(ExperienceEnd.from_message(cell, message))

    def _experience_end(self, report: ExperienceEnd) -> None:
        self.plugins.experience_end(report)
        self.progress.experience_done(report.cell, report.step, report.steps)

    def finish(self, outcome: dict) -> None:
        """A task's outcome: write its record if the task could not, count it, tell hooks and progress."""
        cell = self.by_id[outcome["cell_id"]]
        if outcome.get("user_error"):
            raise UserError(f"{self.suite_file}: {outcome['user_error']}")
        if not outcome["ran"]:
            self.elsewhere += 1
            self.progress.cell_skipped(cell, outcome["why"])
            return
        record = outcome["record"]
        if not outcome["written"]:
            self.store.write(record)
        self._ended(cell, record)

    def lost(self, cell, error: str) -> None:
        """A cell whose process kept dying: a failed record (checkpoint kept) so the grid goes on."""
        if self.store.status(cell.cell_id) == "done":  # it finished before its process died
            self.progress.cell_skipped(cell, "done by another process")
            self.elsewhere += 1
            return
        from .runner import lost_record  # the runner imports torch: only when a cell was lost

        record = lost_record(cell, error)
        self.store.write(record)
        self._ended(cell, record)

    def _ended(self, cell, record: dict) -> None:
        self.running.discard(cell.cell_id)
        self.failed += record["status"] != "done"
        self.finished += 1
        self.plugins.cell_end(cell=cell, record=record)
        self.progress.cell_finished(cell, record)

    def retrying(self, cell, why: str) -> None:
        self.progress.cell_retrying(cell, why)

    def note(self, text: str) -> None:
        self.progress.note(text)

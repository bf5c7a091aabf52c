"""Progress for a grid run: rich bars on a terminal, plain lines elsewhere (CI logs, files)."""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class GridProgress:
    def __init__(self, total_cells: int, stream=None, force_plain: bool = False):
        self.stream = stream or sys.stderr
        self.total = total_cells
        self.done = 0
        self.plain = force_plain or not self.stream.isatty()
        self._started = {}
        self._bars = None
        if not self.plain:
            self._bars = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._grid = self._bars.add_task("grid", total=total_cells)
            self._cell = self._bars.add_task("cell", total=1, visible=False)

    def __enter__(self):
        if self._bars:
            self._bars.start()
        return self

    def __exit__(self, *exc):
        if self._bars:
            self._bars.stop()
        return False

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def cell_started(self, cell) -> None:
        self._started[cell.cell_id] = time.perf_counter()
        label = f"{cell.variant} | {cell.stream_label} | seed {cell.seed}"
        if self._bars:
            self._bars.update(self._cell, description=label, completed=0, total=1, visible=True)
        else:
            self._say(f"[{self.done + 1}/{self.total}] {label} ...")

    def experience_done(self, cell, step: int, steps: int) -> None:
        if self._bars:
            self._bars.update(self._cell, completed=step + 1, total=steps)
        else:
            self._say(f"    experience {step + 1}/{steps} done")

    def cell_skipped(self, cell, why: str) -> None:
        self.done += 1
        text = f"{cell.variant} | {cell.stream_label} | seed {cell.seed}: skipped, {why}"
        if self._bars:
            self._bars.advance(self._grid)
            self._bars.console.print(text)
        else:
            self._say(f"[{self.done}/{self.total}] {text}")

    def cell_finished(self, cell, record: dict) -> None:
        self.done += 1
        seconds = time.perf_counter() - self._started.pop(cell.cell_id, time.perf_counter())
        if record["status"] == "done":
            last = record["metrics"]["last"]
            text = f"done: last {100 * last:.1f}% in {seconds:.1f}s"
        else:
            text = f"FAILED at experience {record.get('failed_at_experience')}: {record.get('error')}"
        if self._bars:
            self._bars.advance(self._grid)
            self._bars.console.print(f"{cell.variant} | {cell.stream_label} | seed {cell.seed}: {text}")
        else:
            self._say(f"    {text}")

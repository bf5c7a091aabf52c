"""Progress for a grid run: rich bars on a terminal, plain lines elsewhere (CI logs, files).

One bar for the grid and one per running cell, so cells running side by side
(worker processes, Ray tasks, Slurm jobs) share one display. Plain lines name
their cell, since lines of different cells interleave.
"""
from __future__ import annotations

import sys
import time


def label_of(cell) -> str:
    return f"{cell.variant} | {cell.stream_label} | seed {cell.seed}"


class GridProgress:
    def __init__(self, total_cells: int, stream=None, force_plain: bool = False):
        self.stream = stream or sys.stderr
        self.total = total_cells
        self.done = 0
        self.starts = 0
        self.plain = force_plain or not self.stream.isatty()
        self._started: dict[str, float] = {}
        self._cell_bars: dict[str, int] = {}
        self._bars = None
        if not self.plain:  # rich only on a terminal: a logged or scripted run never imports it
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bars = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._grid = self._bars.add_task("grid", total=total_cells)

    def __enter__(self):
        if self._bars:
            self._bars.start()
        return self

    def __exit__(self, *exc):
        if self._bars:
            for bar in self._cell_bars.values():
                self._bars.remove_task(bar)
            self._bars.stop()
        return False

    def note(self, text: str) -> None:
        if self._bars:
            self._bars.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def cell_started(self, cell, where: str | None = None) -> None:
        again = cell.cell_id in self._started
        if not again:
            self.starts += 1
        self._started[cell.cell_id] = time.perf_counter()
        label = label_of(cell) + (f" ({where})" if where else "")
        if self._bars:
            if cell.cell_id in self._cell_bars:
                self._bars.update(self._cell_bars[cell.cell_id], description="  " + label)
            else:
                self._cell_bars[cell.cell_id] = self._bars.add_task("  " + label, total=None)
        else:
            self.note(f"[{self.starts}/{self.total}] {label} ...")

    def experience_done(self, cell, step: int, steps: int) -> None:
        if self._bars:
            bar = self._cell_bars.get(cell.cell_id)
            if bar is not None:
                self._bars.update(bar, completed=step + 1, total=steps)
        else:
            self.note(f"    {label_of(cell)}: experience {step + 1}/{steps} done")

    def cell_retrying(self, cell, why: str) -> None:
        self.note(f"    {label_of(cell)}: {why}")

    def _end(self, cell) -> float:
        self.done += 1
        bar = self._cell_bars.pop(cell.cell_id, None)
        if self._bars:
            if bar is not None:
                self._bars.remove_task(bar)
            self._bars.advance(self._grid)
        return time.perf_counter() - self._started.pop(cell.cell_id, time.perf_counter())

    def cell_skipped(self, cell, why: str) -> None:
        self._end(cell)
        self.note(f"[{self.done}/{self.total} ended] {label_of(cell)}: skipped, {why}")

    def cell_finished(self, cell, record: dict) -> None:
        seconds = self._end(cell)
        if record["status"] == "done":
            text = f"done: last {100 * record['metrics']['last']:.1f}% in {seconds:.1f}s"
        else:
            text = f"FAILED at experience {record.get('failed_at_experience')}: {record.get('error')}"
        self.note(f"[{self.done}/{self.total} ended] {label_of(cell)}: {text}")

"""The end of a run: what it writes (leaderboard files, report, figures, the loggers' close) and the checks
made before its first cell so that none of it can fail after the work (clbench/api.py runs both).

Each check raises ``UserError`` with one line naming the suite file and key; each output is written on its
own, so one that still fails at the end leaves the records and the other outputs, and becomes one line in
the run summary's ``errors``.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def cannot_write(path: Path, folder: bool = False) -> str | None:
    """Why this process cannot write the file (or, with ``folder``, the folder) ``path``, or None.

    A missing folder on the way is made when the run writes, so the nearest existing one must be a
    folder it may write in. Files are written atomically (a temporary file, then a rename), which
    needs the folder writable, not the file.
    """
    if path.exists():
        if path.is_dir() != folder:
            return "it is a folder, not a file" if path.is_dir() else "it is a file, not a folder"
        where = path if folder else path.parent
    else:
        where = path.parent
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            return f"{where} is a file, not a folder"
    if not os.access(where, os.W_OK | os.X_OK):
        return f"permission denied: this user may not write in {where}"
    return None


def check_outputs(suite, suite_file, results_dir: Path) -> None:
    """Every path the run writes at its end (and the records folder its cells write), checked before any cell.

    UserError naming the suite file and the ``report`` key that asks for the output (or the results folder).
    """
    from .leaderboard import EXTENSIONS

    for path in (results_dir, results_dir / "records"):
        problem = cannot_write(path, folder=True)
        if problem:
            raise UserError(f"cannot write the results folder {path}: {problem}; give another results folder or make it writable")
    report = suite.report
    outputs = [(f"leaderboard.{EXTENSIONS[fmt]}", False, "report.formats", f"drop '{fmt}' from report.formats")
               for fmt in report.formats]
    if report.html:
        outputs.append(("report.html", False, "report.html", "set report.html: false"))
    if report.plots:
        outputs.append(("plots", True, "report.plots", "set report.plots: false"))
    for name, folder, key, fix in outputs:
        problem = cannot_write(results_dir / name, folder)
        if problem:
            raise UserError(f"{suite_file}: {key}: cannot write {results_dir / name}: {problem}; move it away or {fix}")


def reference_of_run(suite, suite_file, store, todo, only) -> tuple[str | None, list[str]]:
    """The row ``report.reference`` names in the leaderboard this run writes, and the warnings.

    That leaderboard is built from the suite's finished records in the results folder once ``todo`` has
    run, so the row must be among those records and the cells to run. The suite itself was checked to
    have exactly one such row (clbench.suite); when ``only`` leaves its cells out (or they failed and are
    not retried) the reference is dropped with a warning: the leaderboard is still written, without
    paired differences.
    """
    name = suite.report.reference
    if name is None:
        return None, []
    from .config import reference_row
    from .suite import leaderboard_rows

    ids = {c.cell_id for c in suite.cells}
    done = [r for r in store.records() if r.get("cell_id") in ids and r.get("status") == "done"]
    rows = leaderboard_rows(done + [{"variant": c.variant, "config": c.config} for c in todo])
    row, hint = reference_row(name, rows)
    if row is not None:
        return row, []
    cause = ("the cells --only selects and the finished records in " if only else "the cells to run and the finished records in ")
    fix = f"add its cells to --only (e.g. --only '{name}*')" if only else "rerun its failed cells with --retry-failed"
    return None, [f"{suite_file}: report.reference: '{name}' names no single row of this run's leaderboard ({cause}"
                  f"{store.root}){hint}; the leaderboard is written without paired differences: {fix}, or compare later with "
                  f"'clbench table {store.root} --reference {name}'"]


def logger_in(exc: BaseException) -> str | None:
    """The name of the logger (a ``clbench.loggers.Logger``) whose code raised ``exc``, or None."""
    import traceback

    from .loggers import Logger

    for frame, _ in traceback.walk_tb(exc.__traceback__):
        obj = frame.f_locals.get("self")
        if isinstance(obj, Logger):
            return obj.name or type(obj).__name__
    return None


def start_run(plugins, suite, suite_file, results_dir, todo) -> None:
    """Fire ``clbench_run_start``, where the suite's loggers are built, before any cell.

    A logger that cannot start (its extra is not installed, its file cannot be opened) is a
    UserError naming the suite file and ``loggers``; any other plugin's error passes through.
    """
    from .errors import brief

    try:
        plugins.run_start(suite=suite, results_dir=results_dir, cells=todo)
    except Exception as exc:
        if isinstance(exc, UserError) and str(exc).startswith("loggers:"):
            raise UserError(f"{suite_file}: {exc}") from None
        name = logger_in(exc)
        if name is None:
            raise
        problem = str(exc) if isinstance(exc, UserError) else brief(exc)
        raise UserError(f"{suite_file}: loggers: logger '{name}' could not start: {problem}") from None


def _unwritten(path: Path, exc: BaseException) -> str:
    from .errors import brief

    return (f"could not write {path}: {brief(exc)}; the records and the other outputs are written: fix this and rerun "
            f"the same command (a run with nothing left to do writes its outputs again)")


def write_outputs(records, suite, suite_file, store, results_dir, reference):
    """The suite's leaderboard from ``records``, written in its formats, and its report and figures when asked for.

    Returns (board, files written, figures written, warnings, errors). Each output is written on its own:
    one that fails (a full disk, a folder made read-only meanwhile) is an error line and the others are
    written all the same. A ``reference`` with no row now (its cells failed in this run) is a warning and
    the leaderboard is written without paired differences.
    """
    from .leaderboard import EXTENSIONS, Leaderboard, write_leaderboard

    warnings, errors = [], []

    def build(reference):
        return Leaderboard.from_records(records, suite.report.metrics, source=str(store.records_dir),
                                        order=[c.cell_id for c in suite.cells], reference=reference)

    try:
        board = build(reference)
    except UserError:
        if reference is None:
            raise
        board = build(None)
        if board.n_records:
            warnings.append(f"{suite_file}: report.reference: '{suite.report.reference}' has no finished row in {store.root} "
                            f"after this run (its cells failed); the leaderboard is written without paired differences")
    if not board.n_records:
        return None, [], [], warnings, errors
    paths = []
    for fmt in suite.report.formats:
        try:
            paths += write_leaderboard(board, results_dir, [fmt])
        except Exception as exc:
            errors.append(_unwritten(Path(results_dir) / f"leaderboard.{EXTENSIONS[fmt]}", exc))
    if suite.report.html:
        from .report_html import write_report as write_page

        try:
            paths.append(write_page({results_dir: records}, board, results_dir / "report.html"))
        except Exception as exc:
            errors.append(_unwritten(results_dir / "report.html", exc))
    plots = []
    if suite.report.plots:
        from .plots import plot_all

        try:
            plots = plot_all(records, results_dir / "plots")
        except Exception as exc:
            errors.append(_unwritten(results_dir / "plots", exc))
    return board, paths, plots, warnings, errors

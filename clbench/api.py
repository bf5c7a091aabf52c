"""clbench from Python: what the ``clbench`` command line does, as functions that return objects.

::

    import clbench

    summary = clbench.run_suite("suites/smoke.yaml", "results/smoke")
    print(summary.leaderboard.to_markdown())

The command line (clbench/cli.py) only parses its arguments, calls these and
prints. Bad input raises ``clbench.errors.UserError`` with a one-line message
naming the file and key; nothing is run or written before the input is checked,
and that includes what a run writes at its end (the leaderboard's files, the
report, the figures, the loggers).
Importing this module imports neither torch nor open_clip: only a cell that
actually runs builds a model.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence, Union

from .errors import UserError
from .param_info import ParamInfo, params_of, settings_model
from .run_end import logger_in, check_outputs, reference_of_run, start_run, write_outputs

if TYPE_CHECKING:  # pragma: no cover
    from .leaderboard import Leaderboard
    from .plugins import Plugins
    from .suite import Cell, Suite

PathLike = Union[str, os.PathLike]

__all__ = ["RunSummary", "PluginInfo", "ParamInfo", "run_suite", "validate_suite", "leaderboard", "write_plots", "write_report",
           "read_record", "list_plugins", "plugin_params", "records_of"]


@dataclass(frozen=True)
class RunSummary:
    """What :func:`run_suite` did.

    - ``suite``: the validated suite; ``results_dir``: where its records are.
    - ``cells``: the cells considered (all of the suite's, or those ``only`` selected), in grid order;
      ``status``: each one's record status before the run (cell id -> ``"done"``, ``"failed"`` or None: no record);
      ``todo``: the cells this call ran (or, with ``dry_run``, would run).
    - ``done`` / ``failed_now`` / ``elsewhere``: of ``todo``, how many finished, failed, or were taken by
      another clbench process on the same folder meanwhile.
    - ``records``: every record of the suite's cells now in the folder; ``failed``: how many of them say failed.
    - ``leaderboard``: built from ``records`` (None on a dry run or when no record is done);
      ``leaderboard_paths`` / ``plot_paths``: the files written (the suite's ``report.formats``, ``report.html``
      (``report.html`` in the results folder) and ``report.plots``).
    - ``warnings``: one line each, e.g. a ``report.reference`` that names no row of this run's leaderboard (``only``
      left its cells out), so the leaderboard is written without paired differences.
    - ``errors``: one line each for an output of the run's end that could not be written (a full disk) or a
      logger that failed to close; every other output and every record is written all the same.
    """

    suite: "Suite"
    results_dir: Path
    cells: tuple["Cell", ...]
    status: dict[str, str | None]
    todo: tuple["Cell", ...]
    dry_run: bool = False
    done: int = 0
    failed_now: int = 0
    elsewhere: int = 0
    records: tuple[dict, ...] = ()
    failed: int = 0
    leaderboard: "Leaderboard | None" = None
    leaderboard_paths: tuple[Path, ...] = ()
    plot_paths: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def skipped(self) -> int:
        """Cells left alone because their record is already there (done, or failed without ``retry_failed``)."""
        return len(self.cells) - len(self.todo)

    @property
    def ok(self) -> bool:
        """True when no cell of the suite is failed and every output was written (``clbench run`` then exits 0, else 1)."""
        return not (self.failed_now or self.failed or self.errors)


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin as ``clbench list`` shows it: name, the distribution it comes from, its docstring's first line."""

    name: str
    origin: str
    summary: str
    obj: object = field(repr=False, default=None)


def _plugins(plugins: "Plugins | None") -> "Plugins":
    from .plugins import get_plugins

    return plugins or get_plugins()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def validate_suite(path: PathLike, *, plugins: "Plugins | None" = None) -> "Suite":
    """Read, validate and expand the suite file at ``path``; nothing is run and no data is read.

    ``plugins``: a ``clbench.plugins.Plugins`` (default: the process's, built from the installed
    entry points). Returns the ``clbench.suite.Suite`` with its ``cells`` in grid order.
    Raises ``UserError`` (the file and key, e.g. ``suite.yaml: seeds: seed 1 is listed twice``)
    for anything the suite gets wrong.
    """
    from .suite import load_suite

    return load_suite(Path(path), _plugins(plugins))


def _select(cells, only: Sequence[str]):
    import fnmatch

    return [c for c in cells if not only or any(
        fnmatch.fnmatch(x, pat) for pat in only for x in (c.method, c.variant, c.stream_label, c.cell_id))]


def run_suite(suite_file: PathLike, results: PathLike | None = None, *, executor: str | None = None,
              workers: int | None = None, only: Iterable[str] = (), retry_failed: bool = False,
              keep_checkpoints: bool = False, dry_run: bool = False, data_root: PathLike | None = None,
              plugins: "Plugins | None" = None, progress: bool = True) -> RunSummary:
    """Run every cell of ``suite_file`` that the results folder lacks, then write the leaderboard (``clbench run``).

    Arguments (each as the ``clbench run`` option of the same name):

    - ``results``: the results folder (default ``results/<suite name>``); its records make a rerun resume.
    - ``executor``: where cells run (default the suite's ``executor``, else ``local``); ``workers``: cells at once.
    - ``only``: glob patterns (or one); only cells whose method, variant, stream or id match one are considered.
    - ``retry_failed``: run cells whose record says failed again (from their last checkpoint);
      ``keep_checkpoints``: keep each cell's last checkpoint after its record is written.
    - ``dry_run``: run nothing; the summary's ``status`` and ``todo`` say what would run.
    - ``data_root``: the folder holding the datasets (``$CLBENCH_DATA`` while this call runs).
    - ``plugins``: a ``clbench.plugins.Plugins`` (default: the process's).
    - ``progress``: print the run's header line and per-cell progress on stderr, as ``clbench run`` does.

    Returns a :class:`RunSummary`; a cell that fails does not raise (its record says failed,
    ``summary.ok`` is False), nor does an output of the run's end that cannot be written
    (``summary.errors``; the records and the other outputs are written). A suite with nothing
    left to do builds no model, and writes the outputs again.
    Raises ``UserError`` before any cell for a bad suite, an unknown executor, ``only`` matching
    no cell, an output the run's end could not write (a ``leaderboard.csv`` that is a folder, a
    read-only results folder) or a logger that cannot start; and for a problem found when a cell
    starts (a missing dataset). A ``report.reference`` whose cells are neither selected nor done
    is dropped with a warning (``summary.warnings``). ``KeyboardInterrupt`` passes through
    (finished cells and the running cell's last checkpoint are kept).
    """
    only = (only,) if isinstance(only, str) else tuple(only)
    if data_root is None:
        return _run_suite(suite_file, results, executor, workers, only, retry_failed, keep_checkpoints, dry_run, plugins,
                          progress)
    previous = os.environ.get("CLBENCH_DATA")
    os.environ["CLBENCH_DATA"] = str(data_root)
    try:
        return _run_suite(suite_file, results, executor, workers, only, retry_failed, keep_checkpoints, dry_run, plugins,
                          progress)
    finally:
        if previous is None:
            os.environ.pop("CLBENCH_DATA", None)
        else:
            os.environ["CLBENCH_DATA"] = previous


def _check_environment() -> None:
    """The environment variables a run reads, checked before any cell: one line naming the variable (UserError)."""
    from .cache_dir import ENV, cache_root
    from .sync_check import mode_from_env

    mode_from_env()
    if "TORCHELASTIC_RUN_ID" in os.environ and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"):
        raise UserError("clbench run was started by torchrun (WORLD_SIZE is set): every rank would run the whole grid; "
                        "run clbench run once and set train.devices: N, which launches each cell's ranks itself")
    root = cache_root()
    if root is not None and root.exists() and not root.is_dir():
        raise UserError(f"{ENV}: '{root}' is a file, not a folder; point it (or --cache-dir) at a folder, or use 'off'")


def _run_suite(suite_file, results, executor, workers, only, retry_failed, keep_checkpoints, dry_run, plugins,
               progress) -> RunSummary:
    from .results import ResultStore

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UserError(f"workers: must be an integer of at least 1 (cells run at once), got {workers!r}")
    plugins = _plugins(plugins)
    suite = validate_suite(suite_file, plugins=plugins)
    _check_environment()
    executor_name = executor or suite.executor
    executor_cls = plugins.executors.get(executor_name)
    options = suite.executor_options if executor_name == suite.executor else None
    if options is None and hasattr(executor_cls, "Options"):
        options = executor_cls.Options()
    results_dir = Path(results) if results is not None else Path("results") / suite.name
    store = ResultStore(results_dir)
    # everything the run's end writes, checked before any cell (and on a dry run, which previews the run)
    check_outputs(suite, suite_file, results_dir)
    cells = _select(suite.cells, only)
    if not cells:
        raise UserError(f"--only: no cell of {suite_file} matches {', '.join(only)}")
    status = {c.cell_id: store.status(c.cell_id) for c in cells}
    todo = [c for c in cells if status[c.cell_id] != "done" and (retry_failed or status[c.cell_id] != "failed")]
    reference, warnings = reference_of_run(suite, suite_file, store, todo, only)
    if progress:
        for line in warnings:
            _stderr(f"warning: {line}")
    planned = dict(suite=suite, results_dir=results_dir, cells=tuple(cells), status=status, todo=tuple(todo))
    if dry_run:
        return RunSummary(**planned, dry_run=True, warnings=tuple(warnings))
    runner = executor_cls(options, workers=workers)
    start_run(plugins, suite, suite_file, results_dir, todo)  # builds the suite's loggers: one that cannot start stops here
    if progress:
        _stderr(f"suite {suite.name}: {len(cells)} cells, {len(cells) - len(todo)} already in {results_dir}, {len(todo)} to run"
                + (f" ({executor_name} executor)" if executor_name != "local" else ""))
    failed_now, elsewhere, errors = _run_cells(todo, len(cells) - len(todo), suite, suite_file, results_dir, store, plugins,
                                               runner, progress, retry_failed, keep_checkpoints)
    ids = {c.cell_id for c in suite.cells}
    records = [r for r in store.records() if r.get("cell_id") in ids]
    board, paths, plots, end_warnings, end_errors = write_outputs(records, suite, suite_file, store, results_dir, reference)
    if progress:
        for line in end_warnings:
            _stderr(f"warning: {line}")
    return RunSummary(**planned, done=len(todo) - failed_now - elsewhere, failed_now=failed_now, elsewhere=elsewhere,
                      records=tuple(records), failed=sum(r.get("status") == "failed" for r in records),
                      leaderboard=board, leaderboard_paths=tuple(paths), plot_paths=tuple(plots),
                      warnings=tuple(warnings + end_warnings), errors=tuple(errors + end_errors))


def _run_cells(todo, skipped, suite, suite_file, results_dir, store, plugins, runner, progress, retry_failed,
               keep_checkpoints) -> tuple[int, int, list[str]]:
    """Run ``todo`` through ``runner`` with the run's events and progress; (failed, taken elsewhere, end errors).

    ``clbench_run_start`` has fired (``_start_run``); an error of ``clbench_run_end`` (a logger that fails
    to close) is returned as one line, so the leaderboard is written all the same.
    """
    import io

    from .errors import brief
    from .grid import GridRun
    from .progress import GridProgress

    shown = GridProgress(len(todo)) if progress else GridProgress(len(todo), stream=io.StringIO())
    with shown:
        grid = GridRun(todo, suite_file=suite_file, results_dir=results_dir, store=store, plugins=plugins,
                       progress=shown, retry_failed=retry_failed, keep_checkpoints=keep_checkpoints)
        if todo:
            runner.run(grid)
    summary = {"done": len(todo) - grid.failed - grid.elsewhere, "failed": grid.failed, "skipped": skipped,
               "elsewhere": grid.elsewhere}
    try:
        plugins.run_end(suite=suite, results_dir=results_dir, summary=summary)
    except Exception as exc:
        name = logger_in(exc)
        what = f"{suite_file}: loggers: logger '{name}' failed to close" if name else "a clbench_run_end hook failed"
        return grid.failed, grid.elsewhere, [f"{what}: {brief(exc)}"]
    return grid.failed, grid.elsewhere, []


def _dirs(results_dirs) -> list[Path]:
    if isinstance(results_dirs, (str, os.PathLike)):
        return [Path(results_dirs)]
    dirs = [Path(d) for d in results_dirs]
    if not dirs:
        raise UserError("no results folder given")
    return dirs


def records_of(results_dirs: PathLike | Iterable[PathLike]) -> list[dict]:
    """Every readable record in one results folder or several (e.g. one per machine), in file-name order per folder.

    Raises ``UserError`` for a folder without a ``records`` folder.
    """
    from .results import ResultStore

    records = []
    for d in _dirs(results_dirs):
        if not (d / "records").is_dir():
            raise UserError(f"{d}: no records folder here; run a suite first ('clbench run SUITE --results {d}')")
        records += ResultStore(d).records()
    return records


def leaderboard(results_dirs: PathLike | Iterable[PathLike], metrics: Sequence[str] | None = None,
                reference: str | None = None) -> "Leaderboard":
    """The leaderboard of the records in one results folder or several, merged (``clbench table``).

    - ``metrics``: metric names for the columns (default ``last``, ``avg_inc``, ``forgetting``;
      the names are listed in ``clbench.metrics.METRICS``).
    - ``reference``: a method name or row label; every other row then shows its mean paired
      difference to it over matching seeds, marked † when a paired t-test gives p < 0.05.

    Returns a ``clbench.leaderboard.Leaderboard``: ``to_markdown()``, ``to_latex()``, ``to_csv()``,
    ``render(fmt)``; its ``cells`` and ``table`` are pandas DataFrames (one row per cell and
    metric; mean ± std per row and column). Raises ``UserError`` for a folder without records,
    an unknown metric or reference, when no record is done, or when no record has a value for any of ``metrics``.
    """
    from .leaderboard import DEFAULT_METRICS, Leaderboard
    from .metrics import METRICS
    from .registry import unknown_line

    metrics = tuple(metrics) if metrics else DEFAULT_METRICS
    bad = next((m for m in metrics if m not in METRICS), None)
    if bad is not None:
        raise UserError(f"metrics: {unknown_line('metric', bad, METRICS)}")
    dirs = _dirs(results_dirs)
    records = records_of(dirs)
    source = ", ".join(str(d / "records") for d in dirs)
    board = Leaderboard.from_records(records, metrics, source=source, reference=reference)
    if not board.n_records:
        raise UserError(f"{source}: no finished records to tabulate")
    if not board.columns():
        raise UserError(f"metrics: no record in {source} has a value for {', '.join(metrics)} "
                        f"(e.g. zs_retention needs a stream with holdout_classes); name other metrics, e.g. last")
    return board


def write_plots(results_dirs: PathLike | Iterable[PathLike], out: PathLike | None = None, *,
                heatmaps: bool = True) -> list[Path]:
    """Write the figures (PNG and PDF) of the records in one results folder or several (``clbench plot``).

    Accuracy after each step per method, last accuracy and forgetting against buffer size (when
    a suite sweeps it), and, with ``heatmaps``, each cell's accuracy matrix. ``out``: the folder for
    them (default ``<results folder>/plots``; required when several folders are given). Returns
    the files written. Raises ``UserError`` for a folder without records or when no record is done.
    """
    from .plots import plot_all

    dirs = _dirs(results_dirs)
    if out is None and len(dirs) > 1:
        raise UserError("several results folders: say where the figures go (out=..., or -o)")
    paths = plot_all(records_of(dirs), Path(out) if out is not None else dirs[0] / "plots", heatmaps=heatmaps)
    if not paths:
        raise UserError(f"{', '.join(map(str, dirs))}: no finished records to plot")
    return paths


def write_report(results_dirs: PathLike | Iterable[PathLike], out: PathLike | None = None, *,
                 metrics: Sequence[str] | None = None, reference: str | None = None) -> Path:
    """Write one self-contained HTML page of the records in one results folder or several (``clbench report``).

    The page: the leaderboard (as :func:`leaderboard` with ``metrics`` and ``reference``, sortable),
    accuracy after each step, the buffer-size sweep, accuracy against total memory with each method's
    area under it (docs/report.md), any cell's accuracy matrix, config, cost and manifest, and the records
    it was built from. ``out``: the file (default ``<results folder>/report.html``; required for several
    folders). Returns its path. Raises ``UserError`` for an output that cannot be written, a folder
    without records, an unknown metric or reference, or when no record is done; nothing is read before
    the output is checked.
    """
    from .report_html import check_output, write_report as write_page

    dirs = _dirs(results_dirs)
    if out is None and len(dirs) > 1:
        raise UserError("several results folders: say where the page goes (out=..., or -o)")
    out = Path(out) if out is not None else dirs[0] / "report.html"
    check_output(out)
    board = leaderboard(dirs, metrics, reference)
    return write_page({d: records_of([d]) for d in dirs}, board, out)


def read_record(target: PathLike) -> dict:
    """One record (``clbench show``): a record file, or ``DIR/<cell_id>`` for a cell of the results folder DIR.

    Returns the record as a dict (keys in docs/reliability.md and SPEC.md: ``cell_id``, ``status``,
    ``acc_matrix``, ``metrics``, ``cost``, ``manifest``, ...). Raises ``UserError`` when there is
    no record there or it is not readable JSON.
    """
    import json

    target = Path(target)
    path = target if target.suffix == ".json" else target.parent / "records" / f"{target.name}.json"
    if not path.is_file():
        raise UserError(f"{target}: no record there; give DIR/records/<cell_id>.json or DIR/<cell_id>")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not a readable record ({exc})") from None


def list_plugins(kind: str, *, plugins: "Plugins | None" = None) -> list[PluginInfo]:
    """Every registered plugin of ``kind`` (``methods``, ``datasets``, ``executors`` or ``loggers``), by name (``clbench list``).

    Raises ``UserError`` for another kind.
    """
    kinds = ("methods", "datasets", "executors", "loggers")
    if kind not in kinds:
        from .registry import unknown_line

        raise UserError(unknown_line("plugin kind", kind, kinds))
    out = []
    for entry in _plugins(plugins).registry(kind):
        doc = (getattr(entry.obj, "__doc__", None) or sys.modules[entry.obj.__module__].__doc__ or "").strip().splitlines()
        out.append(PluginInfo(entry.name, entry.origin, doc[0] if doc else "", entry.obj))
    return out


def plugin_params(kind: str, name: str, *, plugins: "Plugins | None" = None) -> list[ParamInfo]:
    """The parameters of the plugin ``name`` of ``kind`` (``methods``, ``datasets``, ``executors``, ``loggers``), in order.

    What a suite may set under the plugin's entry, each with its type, default, allowed range and
    description (:class:`ParamInfo`); [] for a plugin without settings (loggers take none). Nothing
    but the plugin's module is imported (no torch). Raises ``UserError`` for an unknown kind, or an
    unknown name (with a did-you-mean and the registered names).
    """
    from .registry import unknown_line

    found = {p.name: p for p in list_plugins(kind, plugins=plugins)}
    if name not in found:
        raise UserError(unknown_line(kind.removesuffix("s"), name, found))
    model = settings_model(kind, found[name].obj)
    return params_of(model) if model is not None else []



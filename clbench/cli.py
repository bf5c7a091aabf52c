"""The ``clbench`` command line: run, validate, table, plot, list, show.

Exit codes: 0 all good; 1 some cells failed (the rest are kept); 2 bad input
(one line on stderr, nothing run); 130 interrupted.
"""
from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path

import click

from .errors import UserError

FORMATS = ("csv", "md", "latex")


def _records_of(results_dir: Path) -> list[dict]:
    from .results import ResultStore

    if not (results_dir / "records").is_dir():
        raise UserError(f"{results_dir}: no records folder here; run a suite first ('clbench run SUITE --results {results_dir}')")
    return list(ResultStore(results_dir).records())


def _metrics_option(value: str | None, default) -> tuple[str, ...]:
    from .metrics import METRICS
    from .registry import did_you_mean

    if not value:
        return tuple(default)
    names = tuple(m.strip() for m in value.split(",") if m.strip())
    for m in names:
        if m not in METRICS:
            raise UserError(f"--metrics: unknown metric '{m}'{did_you_mean(m, METRICS)}; known: {', '.join(METRICS)}")
    return names


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clbench")
def cli():
    """Benchmark continual-learning methods for CLIP models."""


@cli.command()
@click.argument("suite_file", type=click.Path(path_type=Path))
@click.option("--results", "results_dir", type=click.Path(path_type=Path), help="Results folder (default results/<suite name>).")
@click.option("--executor", default=None, help="Where cells run (default: the suite's, else local).")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Cells run at once: local worker processes, or the most Ray tasks / Slurm jobs in flight.")
@click.option("--only", "only", multiple=True, help="Run only cells whose method, variant, stream or id match this glob (repeatable).")
@click.option("--retry-failed", is_flag=True, help="Run cells whose record says failed again (from their last checkpoint).")
@click.option("--keep-checkpoints", is_flag=True, help="Keep each cell's last checkpoint after its record is written.")
@click.option("--dry-run", is_flag=True, help="List the cells and their status; run nothing.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Folder holding the datasets (sets $CLBENCH_DATA).")
def run(suite_file, results_dir, executor, workers, only, retry_failed, keep_checkpoints, dry_run, data_root):
    """Run every cell of SUITE_FILE that the results folder lacks, then print the leaderboard."""
    if data_root:
        import os

        os.environ["CLBENCH_DATA"] = str(data_root)
    from .leaderboard import Leaderboard, write_leaderboard
    from .plugins import get_plugins
    from .grid import GridRun
    from .progress import GridProgress
    from .results import ResultStore
    from .suite import load_suite

    plugins = get_plugins()
    suite = load_suite(suite_file, plugins)
    executor_name = executor or suite.executor
    executor_cls = plugins.executors.get(executor_name)
    options = suite.executor_options if executor_name == suite.executor else None
    if options is None and hasattr(executor_cls, "Options"):
        options = executor_cls.Options()
    results_dir = results_dir or Path("results") / suite.name
    store = ResultStore(results_dir)
    cells = [c for c in suite.cells if not only or any(
        fnmatch.fnmatch(x, pat) for pat in only for x in (c.method, c.variant, c.stream_label, c.cell_id))]
    if not cells:
        raise UserError(f"--only: no cell of {suite_file} matches {', '.join(only)}")
    status = {c.cell_id: store.status(c.cell_id) for c in cells}
    todo = [c for c in cells if status[c.cell_id] != "done" and (retry_failed or status[c.cell_id] != "failed")]
    if dry_run:
        for c in cells:
            click.echo(f"{c.cell_id}  {status[c.cell_id] or 'todo':7s}  {c.variant} | {c.stream_label} | seed {c.seed}")
        click.echo(f"{len(cells)} cells, {len(todo)} to run, results in {results_dir}")
        return
    runner = executor_cls(options, workers=workers)
    skipped = len(cells) - len(todo)
    click.echo(f"suite {suite.name}: {len(cells)} cells, {skipped} already in {results_dir}, {len(todo)} to run"
               + (f" ({executor_name} executor)" if executor_name != "local" else ""), err=True)
    plugins.run_start(suite=suite, results_dir=results_dir, cells=todo)
    with GridProgress(len(todo)) as progress:
        grid = GridRun(todo, suite_file=suite_file, results_dir=results_dir, store=store, plugins=plugins, progress=progress,
                       retry_failed=retry_failed, keep_checkpoints=keep_checkpoints)
        if todo:
            runner.run(grid)
    failed, elsewhere = grid.failed, grid.elsewhere
    summary = {"done": len(todo) - failed - elsewhere, "failed": failed, "skipped": skipped, "elsewhere": elsewhere}
    plugins.run_end(suite=suite, results_dir=results_dir, summary=summary)
    if elsewhere:
        click.echo(f"{elsewhere} cell(s) were taken by another clbench run on {results_dir}", err=True)
    ids = {c.cell_id for c in suite.cells}
    records = [r for r in store.records() if r.get("cell_id") in ids]
    board = Leaderboard.from_records(records, suite.report.metrics, source=str(store.records_dir), order=[c.cell_id for c in suite.cells],
                                     reference=suite.report.reference)
    if board.n_records:
        paths = write_leaderboard(board, results_dir, suite.report.formats)
        if suite.report.plots:
            from .plots import plot_all

            plot_all(records, results_dir / "plots")
        click.echo(board.to_markdown())
        click.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
    if failed or any(r.get("status") == "failed" for r in records):
        n = sum(r.get("status") == "failed" for r in records)
        click.echo(f"{n} cell(s) failed; see their records' 'error', then rerun with --retry-failed", err=True)
        sys.exit(1)


@cli.command()
@click.argument("suite_file", type=click.Path(path_type=Path))
def validate(suite_file):
    """Check SUITE_FILE and print how many cells it expands to."""
    from .suite import load_suite

    suite = load_suite(suite_file)
    variants = len({c.variant for c in suite.cells})
    streams = len({c.stream_label for c in suite.cells})
    seeds = len({c.seed for c in suite.cells})
    click.echo(f"{suite_file}: ok, {len(suite.cells)} cells ({variants} method variants × {streams} streams × {seeds} seeds)")


@cli.command()
@click.argument("results_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="md", show_default=True)
@click.option("--metrics", default=None, help="Comma-separated metrics (default last,avg_inc,forgetting).")
@click.option("--reference", default=None, help="Compare every row with this method (or row label) over matching seeds.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write to this file instead of stdout.")
def table(results_dirs, fmt, metrics, reference, output):
    """The leaderboard from the records in one or more RESULTS_DIRS (e.g. one per machine), merged."""
    from .leaderboard import DEFAULT_METRICS, Leaderboard
    from .results import atomic_write_text

    records = [r for d in results_dirs for r in _records_of(d)]
    source = ", ".join(str(d / "records") for d in results_dirs)
    board = Leaderboard.from_records(records, _metrics_option(metrics, DEFAULT_METRICS), source=source, reference=reference)
    if not board.n_records:
        raise UserError(f"{source}: no finished records to tabulate")
    text = board.render(fmt)
    if output:
        atomic_write_text(output, text)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), help="Folder for the figures (default RESULTS_DIR/plots).")
@click.option("--no-heatmaps", is_flag=True, help="Skip the per-cell accuracy-matrix heatmaps.")
def plot(results_dir, out_dir, no_heatmaps):
    """Figures (PNG and PDF): accuracy after each step, last accuracy and forgetting against buffer size, heatmaps."""
    from .plots import plot_all

    paths = plot_all(_records_of(results_dir), out_dir or results_dir / "plots", heatmaps=not no_heatmaps)
    if not paths:
        raise UserError(f"{results_dir}: no finished records to plot")
    for p in paths:
        click.echo(str(p))


@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Folder for the weights (default: the one clbench ships).")
@click.option("--seed", default=0, show_default=True)
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--per-class", default=60, show_default=True, type=click.IntRange(min=1), help="Images per class and domain.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=2))
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
def pretrain(out_dir, seed, epochs, per_class, batch_size, lr):
    """Pretrain the tiny CLIP on the synthetic world (the defaults rebuild the shipped 'tinyworld' weights)."""
    from .pretrain import WEIGHTS_DIR, pretrain as run_pretraining

    run_pretraining(out_dir or WEIGHTS_DIR, seed=seed, epochs=epochs, per_class=per_class, batch_size=batch_size, lr=lr,
                    log=lambda line: click.echo(line, err=True))


@cli.command(name="list")
@click.argument("kind", type=click.Choice(["methods", "datasets", "executors", "loggers"]))
def list_(kind):
    """Every registered plugin of KIND with the package it comes from."""
    from .plugins import get_plugins

    registry = get_plugins().registry(kind)
    width = max((len(e.name) for e in registry), default=4)
    for entry in registry:
        doc = (getattr(entry.obj, "__doc__", None) or sys.modules[entry.obj.__module__].__doc__ or "").strip().splitlines()
        click.echo(f"{entry.name:{width}s}  {entry.origin:20s}  {doc[0] if doc else ''}")


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
def show(target):
    """A record's summary: a record file, or a cell id inside a results folder given as DIR/ID."""
    path = target if target.suffix == ".json" else target.parent / "records" / f"{target.name}.json"
    if not path.is_file():
        raise UserError(f"{target}: no record there; give DIR/records/<cell_id>.json or DIR/<cell_id>")
    try:
        r = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not a readable record ({exc})") from None
    click.echo(f"{r['cell_id']}  {r['status']}  {r.get('variant')} | {r.get('stream')} | seed {r.get('seed')}")
    if r.get("error"):
        click.echo(f"error: {r['error']}")
    for t, row in enumerate(r.get("acc_matrix") or []):
        click.echo(f"  after step {t + 1}: " + " ".join("    –" if a is None else f"{100 * a:5.1f}" for a in row))
    for k, v in (r.get("metrics") or {}).items():
        click.echo(f"  {k:13s} {'–' if v is None else f'{100 * v:.2f}'}")
    cost = r.get("cost") or {}
    click.echo("  cost: " + ", ".join(f"{k}={v}" for k, v in cost.items()))


INTERRUPTED = "interrupted; finished cells and the running cell's last checkpoint are kept: rerun the same command to resume"


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)  # a scheduler's SIGTERM ends a run like Ctrl-C: cleanly, exit 130
    try:
        cli.main(args=argv, prog_name="clbench", standalone_mode=False)
        sys.exit(0)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()

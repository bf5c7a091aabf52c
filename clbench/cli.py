"""The ``clbench`` command line: run, validate, table, plot, report, list, show.

Each command parses its arguments, calls clbench.api (the same functions a
Python user calls) and prints. Neither this module nor clbench.api imports
torch or open_clip: ``--help``, table, plot, report and show never load them, and
validate, list and a run with nothing left to do load only the installed
plugins' modules (tests/test_cli.py checks which).

Exit codes: 0 all good; 1 some cells failed, or an output of the run's end
(a leaderboard file, the report, the figures) could not be written: the rest
is kept and a rerun writes what is missing; 2 bad input (one line on stderr,
nothing run: ``run`` checks what its end writes before its first cell); 130
interrupted.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from . import api
from .errors import UserError

FORMATS = ("csv", "md", "latex")


def _plugins():
    """The plugins ``main(plugins=...)`` was given (None: the process's)."""
    return click.get_current_context().obj


def _metrics_option(value: str | None) -> tuple[str, ...] | None:
    from .metrics import METRICS
    from .registry import did_you_mean

    if not value:
        return None
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
@click.option("--cache-dir", help="Folder for decoded images and results shared between cells, or 'off' "
              "(sets $CLBENCH_CACHE_DIR; default ~/.cache/clbench).")
def run(suite_file, results_dir, executor, workers, only, retry_failed, keep_checkpoints, dry_run, data_root, cache_dir):
    """Run every cell of SUITE_FILE that the results folder lacks, then print the leaderboard."""
    import os

    if data_root:
        os.environ["CLBENCH_DATA"] = str(data_root)  # for the rest of the process, worker processes included
    if cache_dir:
        os.environ["CLBENCH_CACHE_DIR"] = cache_dir  # likewise
    summary = api.run_suite(suite_file, results_dir, executor=executor, workers=workers, only=only, retry_failed=retry_failed,
                            keep_checkpoints=keep_checkpoints, dry_run=dry_run, plugins=_plugins())
    if dry_run:
        for c in summary.cells:
            click.echo(f"{c.cell_id}  {summary.status[c.cell_id] or 'todo':7s}  {c.variant} | {c.stream_label} | seed {c.seed}")
        click.echo(f"{len(summary.cells)} cells, {len(summary.todo)} to run, results in {summary.results_dir}")
        return
    if summary.elsewhere:
        click.echo(f"{summary.elsewhere} cell(s) were taken by another clbench run on {summary.results_dir}", err=True)
    if summary.leaderboard is not None:
        click.echo(summary.leaderboard.to_markdown())
        if summary.leaderboard_paths:
            click.echo("wrote " + ", ".join(str(p) for p in summary.leaderboard_paths), err=True)
    for line in summary.errors:
        click.echo(f"error: {line}", err=True)
    if summary.failed:
        click.echo(f"{summary.failed} cell(s) failed; see their records' 'error', then rerun with --retry-failed", err=True)
    if not summary.ok:
        sys.exit(1)


@cli.command()
@click.argument("suite_file", type=click.Path(path_type=Path))
def validate(suite_file):
    """Check SUITE_FILE and print how many cells it expands to."""
    suite = api.validate_suite(suite_file, plugins=_plugins())
    variants = len({c.variant for c in suite.cells})
    streams = len({c.stream_label for c in suite.cells})
    seeds = len({c.seed for c in suite.cells})
    sep = " × " if len(suite.cells) == variants * streams * seeds else ", "  # not a full product when an entry names its streams
    click.echo(f"{suite_file}: ok, {len(suite.cells)} cells ({variants} method variants{sep}{streams} streams{sep}{seeds} seeds)")


@cli.command()
@click.argument("results_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="md", show_default=True)
@click.option("--metrics", default=None, help="Comma-separated metrics (default last,avg_inc,forgetting,drift).")
@click.option("--reference", default=None, help="Compare every row with this method (or row label) over matching seeds.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write to this file instead of stdout.")
def table(results_dirs, fmt, metrics, reference, output):
    """The leaderboard from the records in one or more RESULTS_DIRS (e.g. one per machine), merged."""
    text = api.leaderboard(results_dirs, _metrics_option(metrics), reference).render(fmt)
    if output:
        from .results import atomic_write_text

        atomic_write_text(output, text)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), help="Folder for the figures (default RESULTS_DIR/plots).")
@click.option("--no-heatmaps", is_flag=True, help="Skip the per-cell accuracy-matrix heatmaps.")
def plot(results_dir, out_dir, no_heatmaps):
    """Figures (PNG and PDF): accuracy after each step, last accuracy and forgetting against buffer size, heatmaps."""
    for p in api.write_plots(results_dir, out_dir, heatmaps=not no_heatmaps):
        click.echo(str(p))


@cli.command()
@click.argument("results_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="The HTML file (default RESULTS_DIR/report.html; required for several folders).")
@click.option("--metrics", default=None, help="Comma-separated leaderboard metrics (default last,avg_inc,forgetting,drift).")
@click.option("--reference", default=None, help="Compare every row with this method (or row label) over matching seeds.")
def report(results_dirs, output, metrics, reference):
    """One self-contained HTML page (opens offline; send it to a colleague) of the records in RESULTS_DIRS:
    sortable leaderboard, accuracy curves, buffer sweep, accuracy against total memory, each cell's details."""
    path = api.write_report(results_dirs, output, metrics=_metrics_option(metrics), reference=reference)
    click.echo(f"wrote {path} ({path.stat().st_size} bytes)")


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


def _param_lines(params) -> list[str]:
    """A plugin's parameters, one line each: ``  name  type = default  (constraints)  # description``."""
    if not params:
        return ["  (no parameters)"]
    width = max(len(p.name) for p in params)
    lines = []
    for p in params:
        line = f"  {p.name:{width}s}  {p.type} = {p.default}"
        if p.constraints:
            line += f"  ({', '.join(p.constraints)})"
        if p.description:
            line += f"  # {p.description}"
        lines.append(line)
    return lines


@cli.command(name="list")
@click.argument("kind", type=click.Choice(["methods", "datasets", "executors", "loggers"]))
@click.option("--params", is_flag=True, help="Also each one's parameters: type, default, allowed values, what it sets.")
def list_(kind, params):
    """Every registered plugin of KIND with the package it comes from (and, with --params, its parameters)."""
    found = api.list_plugins(kind, plugins=_plugins())
    width = max((len(p.name) for p in found), default=4)
    for p in found:
        click.echo(f"{p.name:{width}s}  {p.origin:20s}  {p.summary}")
        if params:
            for line in _param_lines(api.plugin_params(kind, p.name, plugins=_plugins())):
                click.echo(line)


#: ``clbench show KIND NAME``: the word for each kind of plugin (singular or plural)
SHOW_KINDS = {"method": "methods", "dataset": "datasets", "executor": "executors", "logger": "loggers",
              **{k: k for k in ("methods", "datasets", "executors", "loggers")}}


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.argument("name", required=False)
def show(target, name):
    """A record's summary (TARGET: a record file, or DIR/ID for a cell of the results folder DIR), or, as
    'clbench show method NAME', a method's parameters with their defaults and allowed values (also dataset,
    executor, logger)."""
    word = str(target)
    if name is not None or word in SHOW_KINDS:
        from .registry import unknown_line

        if word not in SHOW_KINDS:
            raise UserError(f"show: {unknown_line('kind', word, [k for k in SHOW_KINDS if not k.endswith('s')])}; "
                            f"give 'clbench show method NAME', or one record: 'clbench show DIR/<cell_id>'")
        kind = SHOW_KINDS[word]
        if name is None:
            raise UserError(f"show {word}: give its name, e.g. 'clbench show {word} NAME' ('clbench list {kind}' names them)")
        params = api.plugin_params(kind, name, plugins=_plugins())  # an unknown name: UserError with a did-you-mean
        info = next(p for p in api.list_plugins(kind, plugins=_plugins()) if p.name == name)
        click.echo(f"{info.name}  ({info.origin})  {info.summary}")
        for line in _param_lines(params):
            click.echo(line)
        return
    r = api.read_record(target)
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


def main(argv=None, *, plugins=None) -> None:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); always ends with ``SystemExit`` and its exit code.

    ``plugins``: the ``clbench.plugins.Plugins`` the commands use (default: the process's, built
    from the installed entry points); tests pass one holding plugins of their own.
    """
    import signal

    signal.signal(signal.SIGTERM, _terminate)  # a scheduler's SIGTERM ends a run like Ctrl-C: cleanly, exit 130
    try:
        cli.main(args=argv, prog_name="clbench", standalone_mode=False, obj=plugins)
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

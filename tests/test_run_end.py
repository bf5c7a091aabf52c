"""The end of ``clbench run`` (leaderboard, report, figures, loggers) is checked before the first cell, and a run whose
cells finished always leaves its records and a leaderboard, even when one output cannot be written at the end."""
import json
import os

import pytest

from clbench import Method, api, hookimpl
from clbench.cli import main
from clbench.leaderboard import Leaderboard
from clbench.loggers import Logger
from clbench.suite import leaderboard_rows
from clbench.testing import TINY_STREAM, tiny_suite, write_suite


def cli(capsys, *args, plugins=None):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args], plugins=plugins)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def records_in(folder):
    return {r["method"]: r for r in (json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json")))}


class Shy(Method):
    """Zero-shot under another name: a second cheap row."""

    name = "shy"
    trains = False


class Exploding(Method):
    """Fails in its first experience."""

    name = "exploding"

    def train(self, exp):
        raise RuntimeError("boom")


class Fragile(Logger):
    """Starts, then fails to close (a dashboard that went away)."""

    name = "fragile"

    def close(self):
        raise RuntimeError("dashboard unreachable")


class Broken(Logger):
    """Cannot start."""

    name = "broken"

    def __init__(self, results_dir, suite):
        super().__init__(results_dir, suite)
        raise ConnectionError("no tracking server at http://nowhere")


class Extra:
    @hookimpl
    def clbench_add_methods(self, register):
        register(Shy)
        register(Exploding)

    @hookimpl
    def clbench_add_loggers(self, register):
        register(Fragile)
        register(Broken)


@pytest.fixture
def extra(plugins):
    plugins.pm.register(Extra())
    return plugins


# --- report.reference ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("methods, reference, expected", [
    (["zeroshot"], "finetune", "no single row 'finetune' in the suite's leaderboard; its rows: zeroshot"),
    (["zeroshot", {"name": "finetune", "loss": ["ce", "contrastive"]}], "finetune",
     "'finetune' has several rows: finetune (loss=ce), finetune (loss=contrastive)"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_reference_naming_no_single_row_of_the_suite_is_refused_naming_the_suite_key(tmp_path, capsys, methods, reference,
                                                                                       expected, command):
    path = write_suite(tmp_path / "s.yaml", tiny_suite(methods, report={"reference": reference}))
    code, _, err = cli(capsys, command, path, *(["--results", tmp_path / "out"] if command == "run" else []))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: report.reference: ") and expected in err
    assert "--reference" not in err and not (tmp_path / "out").exists()


def test_only_leaving_out_the_reference_warns_before_any_cell_and_writes_the_leaderboard(tmp_path, capsys, extra):
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot", "shy"], report={"reference": "shy", "formats": ["csv", "md"]}))
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "run", path, "--results", out, "--only", "zeroshot", plugins=extra)
    assert code == 0, err
    first, second = err.splitlines()[:2]
    assert first.startswith(f"warning: {path}: report.reference: 'shy' names no single row of this run's leaderboard")
    assert "--only" in first and "without paired differences" in first and "--reference:" not in err
    assert second.startswith("suite tiny: 1 cells")  # the warning came before any work
    assert set(records_in(out)) == {"zeroshot"}
    assert (out / "leaderboard.csv").is_file() and (out / "leaderboard.md").is_file() and " [" not in stdout

    # once the reference's record is in the folder, a run selecting other cells compares with it
    code, _, err = cli(capsys, "run", path, "--results", out, "--only", "shy", plugins=extra)
    assert code == 0 and "warning" not in err
    (out / "records" / f"{records_in(out)['zeroshot']['cell_id']}.json").unlink()
    code, stdout, err = cli(capsys, "run", path, "--results", out, "--only", "zeroshot", plugins=extra)
    assert code == 0 and "warning" not in err and "| zeroshot | " in stdout and " [+0.0" in stdout
    assert "paired difference to shy" in (out / "leaderboard.md").read_text()

    # the table command's own flag keeps its name in its errors
    code, _, err = cli(capsys, "table", out, "--reference", "nosuch")
    assert code == 2 and err.startswith("error: --reference: no single row 'nosuch' in the table")


def test_a_reference_whose_cells_fail_in_the_run_leaves_a_leaderboard_without_it(tmp_path, capsys, extra):
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot", "exploding"], report={"reference": "exploding"}))
    code, _, err = cli(capsys, "run", path, "--results", tmp_path / "out", plugins=extra)
    assert code == 1 and "1 cell(s) failed" in err
    assert f"warning: {path}: report.reference: 'exploding' has no finished row" in err
    assert (tmp_path / "out" / "leaderboard.md").is_file() and "| zeroshot |" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_leaderboard_rows_are_the_rows_the_leaderboard_gives(tmp_path, plugins):
    """suite.leaderboard_rows (no pandas, for validate) and the leaderboard label rows alike, '#hash' included."""
    fast = dict(TINY_STREAM, name="fast", train={"lr": 1e-3})  # a stream's train override: another config per method
    suite = api.validate_suite(write_suite(tmp_path / "s.yaml", tiny_suite(
        ["zeroshot", {"name": "finetune", "loss": ["ce", "contrastive"]}], streams=[dict(TINY_STREAM), fast], seeds=[0, 1])),
        plugins=plugins)
    records = [{"cell_id": c.cell_id, "method": c.method, "variant": c.variant, "stream": c.stream_label, "seed": c.seed,
                "config": c.config, "status": "done", "metrics": {"last": 0.5}} for c in suite.cells]
    rows = Leaderboard.from_records(records, ["last"]).variants()
    assert len(rows) == 6 and any("#" in r for r in rows)
    assert sorted(leaderboard_rows(records)) == sorted(rows)


# --- outputs and loggers, checked before any cell ------------------------------------------------------------------

@pytest.mark.parametrize("report, make, expected", [
    ({"formats": ["csv", "md"]}, lambda out: (out / "leaderboard.csv").mkdir(parents=True),
     "report.formats: cannot write {out}/leaderboard.csv: it is a folder, not a file; move it away or drop 'csv' from report.formats"),
    ({"html": True}, lambda out: (out / "report.html").mkdir(parents=True),
     "report.html: cannot write {out}/report.html: it is a folder, not a file"),
    ({"plots": True}, lambda out: out.mkdir() or (out / "plots").write_text(""),
     "report.plots: cannot write {out}/plots: it is a file, not a folder"),
])
def test_an_output_the_end_cannot_write_is_refused_before_any_cell(tmp_path, capsys, report, make, expected):
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], report=report))
    out = tmp_path / "out"
    make(out)
    code, _, err = cli(capsys, "run", path, "--results", out)
    assert code == 2 and err.startswith(f"error: {path}: {expected.format(out=out)}")
    assert err.count("\n") == 1 and not (out / "records").exists()


def test_a_results_folder_that_cannot_be_written_is_refused_before_any_cell(tmp_path, capsys):
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"]))
    (tmp_path / "file").write_text("")
    code, _, err = cli(capsys, "run", path, "--results", tmp_path / "file" / "out")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot write the results folder {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file")
    if os.geteuid() == 0:  # root writes in read-only folders: nothing to refuse there
        return
    (tmp_path / "locked").mkdir(mode=0o555)
    code, _, err = cli(capsys, "run", path, "--results", tmp_path / "locked" / "out")
    assert code == 2 and "permission denied" in err and not (tmp_path / "locked" / "out").exists()


def test_a_logger_that_cannot_start_stops_the_run_before_any_cell(tmp_path, capsys, extra):
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], loggers=["broken"]))
    code, _, err = cli(capsys, "run", path, "--results", tmp_path / "out", plugins=extra)
    assert code == 2 and err == (f"error: {path}: loggers: logger 'broken' could not start: "
                                 f"ConnectionError: no tracking server at http://nowhere\n")
    assert not (tmp_path / "out" / "records").exists()
    # a built-in logger's file that cannot be opened: the same line, naming it
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], loggers=["csv"]))
    (tmp_path / "out2" / "steps.csv").mkdir(parents=True)
    code, _, err = cli(capsys, "run", path, "--results", tmp_path / "out2", plugins=extra)
    assert code == 2 and err.startswith(f"error: {path}: loggers: logger 'csv' could not start: IsADirectoryError")
    assert err.count("\n") == 1 and not (tmp_path / "out2" / "records").exists()


# --- an output that fails at the end -------------------------------------------------------------------------------

def test_an_output_failing_at_the_end_leaves_the_records_and_the_other_outputs(tmp_path, capsys, extra, monkeypatch):
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], loggers=["fragile"]))
    out = tmp_path / "out"

    def full_disk(self):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Leaderboard, "to_latex", full_disk)
        code, stdout, err = cli(capsys, "run", path, "--results", out, plugins=extra)
    assert code == 1  # not all done (SPEC's 1), and not bad input: the work was done and is kept
    assert records_in(out)["zeroshot"]["status"] == "done"
    assert (out / "leaderboard.csv").is_file() and (out / "leaderboard.md").is_file() and not (out / "leaderboard.tex").exists()
    assert "| zeroshot |" in stdout
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {path}: loggers: logger 'fragile' failed to close: RuntimeError: dashboard unreachable",
        f"error: could not write {out / 'leaderboard.tex'}: OSError: [Errno 28] No space left on device; the records and the "
        f"other outputs are written: fix this and rerun the same command (a run with nothing left to do writes its outputs again)",
    ]
    assert "cell(s) failed" not in err

    # the same from Python: the summary says what was not written
    summary = api.run_suite(path, out, plugins=extra, progress=False)
    assert summary.todo == () and (out / "leaderboard.tex").is_file()
    assert not summary.ok and summary.errors == (f"{path}: loggers: logger 'fragile' failed to close: RuntimeError: "
                                                 f"dashboard unreachable",)

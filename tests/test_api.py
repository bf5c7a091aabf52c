"""clbench from Python (clbench.api), and a pytest plugin that leaves other projects' test sessions alone."""
import os
import subprocess
import sys
import textwrap

import pytest

import clbench
from clbench import api
from clbench.errors import UserError
from clbench.testing import tiny_suite, write_suite

#: lazy_loader puts a stub in sys.modules that imports nothing until first used: that is not an import
REALLY = "really = lambda name: type(sys.modules.get(name)).__name__ not in ('NoneType', '_LazyModule')"


@pytest.fixture
def suite_file(tmp_path):
    return write_suite(tmp_path / "suite.yaml", tiny_suite(["zeroshot", "finetune"], seeds=[0, 1]))


def test_run_suite_returns_what_it_did_and_resumes(tmp_path, suite_file, plugins):
    out = tmp_path / "out"
    plan = api.run_suite(suite_file, out, dry_run=True, plugins=plugins)
    assert plan.dry_run and len(plan.cells) == 4 and len(plan.todo) == 4 and set(plan.status.values()) == {None}
    assert plan.skipped == 0 and plan.records == () and plan.leaderboard is None
    assert not (out / "records").exists()

    summary = api.run_suite(suite_file, out, only=["zeroshot"], plugins=plugins, progress=False)
    assert (summary.done, summary.failed, summary.skipped, len(summary.records)) == (2, 0, 0, 2) and summary.ok
    assert summary.leaderboard.variants() == ["zeroshot"]
    assert [p.name for p in summary.leaderboard_paths] == ["leaderboard.csv", "leaderboard.md", "leaderboard.tex"]

    again = api.run_suite(suite_file, out, plugins=plugins, progress=False)
    assert (again.done, again.skipped, len(again.records)) == (2, 2, 4)
    assert again.leaderboard.variants() == ["zeroshot", "finetune"]
    rest = api.run_suite(suite_file, out, plugins=plugins, progress=False)
    assert rest.todo == () and rest.done == 0 and rest.skipped == 4
    assert [r["cell_id"] for r in rest.records] == [r["cell_id"] for r in again.records]

    with pytest.raises(UserError, match="--only: no cell"):
        api.run_suite(suite_file, out, only=["nosuch*"], plugins=plugins)


def test_run_suite_sets_the_data_root_only_while_it_runs(tmp_path, suite_file, plugins, monkeypatch):
    monkeypatch.delenv("CLBENCH_DATA", raising=False)
    api.run_suite(suite_file, tmp_path / "out", dry_run=True, data_root=tmp_path / "data", plugins=plugins)
    assert "CLBENCH_DATA" not in os.environ


def test_leaderboard_records_and_plots(tmp_path, suite_file, plugins):
    out = tmp_path / "out"
    api.run_suite(suite_file, out, plugins=plugins, progress=False)
    board = api.leaderboard(out, metrics=["last", "bwt"], reference="zeroshot")
    assert board.n_records == 4 and board.metrics == ("last", "bwt") and board.reference == "zeroshot"
    assert {m for _, m in board.columns()} == {"last", "bwt"} and "bwt" in board.to_markdown()
    assert api.leaderboard([out, out]).n_records == 4  # the same cells merged from two folders count once
    assert clbench.leaderboard(out).to_markdown() == api.leaderboard(out).to_markdown()
    with pytest.raises(UserError, match=r"metrics: unknown metric 'lst' \(did you mean 'last'\?\)"):
        api.leaderboard(out, metrics=["lst"])
    with pytest.raises(UserError, match="no records folder"):
        api.leaderboard(tmp_path / "empty")

    paths = api.write_plots(out, tmp_path / "figures", heatmaps=False)
    assert paths and all(p.parent == tmp_path / "figures" for p in paths)
    with pytest.raises(UserError, match="say where the figures go"):
        api.write_plots([out, out])

    cell_id = board.cells.cell_id.iloc[0]
    assert api.read_record(out / cell_id)["cell_id"] == cell_id
    assert api.read_record(out / "records" / f"{cell_id}.json")["cell_id"] == cell_id
    with pytest.raises(UserError, match="no record there"):
        api.read_record(out / "nosuchcell")


def test_validate_suite_and_list_plugins(tmp_path, suite_file, plugins):
    suite = api.validate_suite(suite_file, plugins=plugins)
    assert len(suite.cells) == 4 and suite.name == "tiny"
    with pytest.raises(UserError, match="seed 1 is listed twice"):
        api.validate_suite(write_suite(tmp_path / "bad.yaml", tiny_suite(["zeroshot"], seeds=[1, 1])), plugins=plugins)
    methods = api.list_plugins("methods", plugins=plugins)
    assert {"zeroshot", "finetune"} <= {p.name for p in methods}
    assert all(p.origin and p.summary for p in methods)
    with pytest.raises(UserError, match="unknown plugin kind 'method' \\(did you mean 'methods'\\?\\)"):
        api.list_plugins("method", plugins=plugins)


def test_package_exports_the_api_lazily():
    code = textwrap.dedent(f"""
        import sys
        {REALLY}
        import clbench
        assert not really("clbench.api")
        from clbench import RunSummary, leaderboard, run_suite, validate_suite, write_plots
        import clbench.api
        assert run_suite is clbench.api.run_suite and leaderboard is clbench.api.leaderboard
        import clbench.leaderboard  # the module of the same name: calling it still calls the function
        assert callable(clbench.leaderboard) and clbench.leaderboard.Leaderboard
        assert not really("torch") and not really("open_clip"), "import clbench must not import torch"
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# --- the pytest plugin: loaded in every session once clbench is installed ------------------------------------------

def test_importing_the_pytest_plugin_changes_no_environment_and_imports_no_torch():
    code = textwrap.dedent(f"""
        import os, sys
        {REALLY}
        before = dict(os.environ)
        import clbench.pytest_plugin, clbench.testing
        assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
        assert not really("torch") and not really("open_clip")
    """)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr


def test_another_projects_test_session_is_left_alone(tmp_path):
    """A project that merely has clbench installed: its session sees its own environment, no torch, and the fixtures."""
    (tmp_path / "test_other.py").write_text(textwrap.dedent(f"""
        import os, sys
        {REALLY}

        def test_environment_untouched(clbench_tiny_suite):
            assert "HF_HUB_OFFLINE" not in os.environ
            assert not really("torch")
            assert clbench_tiny_suite(["zeroshot"]).is_file()
    """))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_run_method_sets_hub_offline_only_while_its_cell_runs(monkeypatch, plugins):
    from clbench import runner, testing

    seen = []
    monkeypatch.setattr(runner, "run_cell", lambda cell, plugins: seen.append(os.environ.get("HF_HUB_OFFLINE")) or {"status": "done"})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert testing.run_method(plugins.methods.get("zeroshot"), plugins=plugins) == {"status": "done"}
    assert seen == ["1"] and "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the caller's choice stands
    testing.run_method(plugins.methods.get("zeroshot"), plugins=plugins)
    assert seen == ["1", "0"] and os.environ["HF_HUB_OFFLINE"] == "0"



@pytest.mark.parametrize("workers", [0, -3, 1.5, True])
def test_run_suite_refuses_what_the_cli_refuses_for_workers(tmp_path, suite_file, plugins, workers):
    with pytest.raises(UserError, match="workers: must be an integer of at least 1"):
        clbench.run_suite(suite_file, tmp_path / "out", workers=workers, plugins=plugins)
    assert not (tmp_path / "out").exists()  # refused before any work

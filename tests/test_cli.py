import json
import subprocess
import sys
from pathlib import Path

import pytest

from clbench import Method, hookimpl
from clbench import api as clbench_api
from clbench import plugins as plugins_module
from clbench.cli import main
from clbench.testing import tiny_suite, write_suite

SPEC_KEYS = {"cell_id", "status", "config", "method", "stream", "seed", "buffer", "class_order", "acc_matrix", "metrics", "cost", "manifest"}
COST_KEYS = {"wall_s", "train_img_per_s", "eval_img_per_s", "peak_rss_mb", "peak_gpu_mb"}
MANIFEST_KEYS = {"clbench_version", "git_commit", "packages", "device", "created"}


def cli(capsys, *args, plugins=None):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args], plugins=plugins)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture
def suite_file(tmp_path):
    return write_suite(tmp_path / "suite.yaml", tiny_suite(["zeroshot", {"name": "finetune", "loss": ["contrastive", "ce"]}], seeds=[0, 1]))


def test_run_writes_complete_records_and_leaderboard_then_resumes_with_no_work(tmp_path, capsys, suite_file):
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "run", suite_file, "--results", out_dir)
    assert code == 0, err
    records = sorted((out_dir / "records").glob("*.json"))
    assert len(records) == 6
    for path in records:
        r = json.loads(path.read_text())
        assert SPEC_KEYS <= set(r) and r["status"] == "done"
        assert COST_KEYS <= set(r["cost"]) and MANIFEST_KEYS <= set(r["manifest"])
        assert r["buffer"] == {"exemplars": 0, "bytes": 0}
        assert sorted(r["class_order"]) == list(range(6))
    for ext in ("csv", "md", "tex"):
        assert (out_dir / f"leaderboard.{ext}").is_file()
    assert "| finetune (loss=ce) |" in out and "(2)" in out

    before = {p.name: p.read_bytes() for p in records}
    code, out, err = cli(capsys, "run", suite_file, "--results", out_dir)
    assert code == 0 and "6 already in" in err and "0 to run" in err
    assert {p.name: p.read_bytes() for p in sorted((out_dir / "records").glob("*.json"))} == before


def test_dry_run_and_only(tmp_path, capsys, suite_file):
    code, out, _ = cli(capsys, "run", suite_file, "--results", tmp_path / "out", "--dry-run")
    assert code == 0 and out.count("todo") == 6 and "6 cells, 6 to run" in out
    code, out, _ = cli(capsys, "run", suite_file, "--results", tmp_path / "out", "--only", "zeroshot")
    assert code == 0 and len(list((tmp_path / "out" / "records").glob("*.json"))) == 2
    code, out, _ = cli(capsys, "run", suite_file, "--results", tmp_path / "out", "--dry-run")
    assert out.count("done") == 2 and "4 to run" in out


def test_validate_prints_cell_count(capsys, suite_file):
    code, out, _ = cli(capsys, "validate", suite_file)
    assert code == 0 and "6 cells (3 method variants × 1 streams × 2 seeds)" in out


@pytest.mark.parametrize(
    "suite, expected",
    [
        (tiny_suite(["zeroshot", "nosuchmethod"]), "methods[1].name: unknown method 'nosuchmethod'"),
        (tiny_suite(["zeroshot"], trian={"lr": 1}), "trian: unknown key (did you mean 'train'?)"),
        (tiny_suite(["zeroshot"], seeds="zero"), "seeds: must be a non-empty list of integers"),
        (tiny_suite([{"name": "finetune", "loss": []}]), "methods[0].loss: an empty list makes an empty grid"),
        (tiny_suite(["zeroshot"], include="base.yaml"), "include: file 'base.yaml' not found"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_suites_exit_2_with_one_line(tmp_path, capsys, suite, expected, command):
    path = write_suite(tmp_path / "bad.yaml", suite)
    code, out, err = cli(capsys, command, path, *(["--results", tmp_path / "out"] if command == "run" else []))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: ") and expected in err
    assert not (tmp_path / "out").exists()


def test_missing_suite_file(tmp_path, capsys):
    code, _, err = cli(capsys, "run", tmp_path / "nope.yaml")
    assert code == 2 and err == f"error: {tmp_path / 'nope.yaml'}: suite file not found\n"


def test_a_crashing_cell_is_recorded_as_failed_and_the_grid_goes_on(tmp_path, capsys):
    class Exploding(Method):
        """Fails in its second experience."""

        name = "exploding"

        def train(self, exp):
            if exp.index == 1:
                raise RuntimeError("boom")

    class Plugin:
        @hookimpl
        def clbench_add_methods(self, register):
            register(Exploding)

    plugins = plugins_module.Plugins(plugins_module.make_plugin_manager())
    plugins.pm.register(Plugin())
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["exploding", "zeroshot"]))
    code, out, err = cli(capsys, "run", path, "--results", tmp_path / "out", plugins=plugins)
    assert code == 1 and "1 cell(s) failed" in err
    records = {r["method"]: r for r in map(json.loads, map(lambda p: p.read_text(), (tmp_path / "out" / "records").glob("*.json")))}
    assert records["exploding"]["status"] == "failed" and records["exploding"]["error"] == "RuntimeError: boom"
    assert records["exploding"]["failed_at_experience"] == 1 and len(records["exploding"]["acc_matrix"]) == 1
    assert records["zeroshot"]["status"] == "done"
    # a rerun leaves the failed cell alone unless asked
    code, _, err = cli(capsys, "run", path, "--results", tmp_path / "out", plugins=plugins)
    assert "0 to run" in err and code == 1
    code, _, err = cli(capsys, "run", path, "--results", tmp_path / "out", "--retry-failed", plugins=plugins)
    assert "1 to run" in err


def test_table_show_plot_list(tmp_path, capsys, suite_file):
    out_dir = tmp_path / "out"
    cli(capsys, "run", suite_file, "--results", out_dir)
    code, out, _ = cli(capsys, "table", out_dir, "--format", "latex", "--metrics", "last,bwt")
    assert code == 0 and "\\toprule" in out and "bwt $\\uparrow$" in out
    code, _, _ = cli(capsys, "table", out_dir, "--format", "csv", "-o", tmp_path / "t.csv")
    assert code == 0 and (tmp_path / "t.csv").read_text().startswith("kind,method,variant")
    code, _, err = cli(capsys, "table", out_dir, "--metrics", "lst")
    assert code == 2 and "did you mean 'last'" in err
    code, _, err = cli(capsys, "table", tmp_path / "empty")
    assert code == 2 and "no records folder" in err
    cell_id = next((out_dir / "records").glob("*.json")).stem
    code, out, _ = cli(capsys, "show", out_dir / cell_id)
    assert code == 0 and cell_id in out and "after step 3" in out
    code, out, _ = cli(capsys, "plot", out_dir)
    assert code == 0 and out.strip().endswith(".png")
    png = out.strip().splitlines()[0]
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    code, out, _ = cli(capsys, "list", "methods")
    assert code == 0 and any(line.startswith("finetune") and "clbench" in line for line in out.splitlines())
    code, out, _ = cli(capsys, "list", "datasets")
    assert "synthetic" in out


def test_list_methods_params_and_show_method(capsys, plugins):
    code, out, _ = cli(capsys, "list", "methods", "--params")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("dro_replay "))
    block = lines[start + 1:next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))]
    assert code == 0 and any(line.split() == ["lam", "float", "=", "1.0", "(>", "0)", "#", "KL-DRO", "temperature", "λ"]
                             for line in block), block
    assert any(line.split()[:5] == ["update", "str", "=", "kl", "(one"] and "(one of kl, eg, uniform)" in line for line in block)
    assert any(line.startswith("  gamma ") and "(> 0, <= 1)" in line for line in block)
    assert any(line.startswith("zeroshot ") for line in lines) and "  (no parameters)" in lines

    code, shown, _ = cli(capsys, "show", "method", "dro_replay")
    assert code == 0 and shown.splitlines()[0].startswith("dro_replay  (clbench)")
    assert shown.splitlines()[1:] == block
    lam = next(p for p in clbench_api.plugin_params("methods", "dro_replay", plugins=plugins) if p.name == "lam")
    assert (lam.type, lam.default, lam.constraints) == ("float", "1.0", ("> 0",))
    update = next(p for p in clbench_api.plugin_params("methods", "dro_replay", plugins=plugins) if p.name == "update")
    assert update.choices == ("kl", "eg", "uniform") and update.default == "kl"

    code, _, err = cli(capsys, "show", "method", "dro_replya")
    assert code == 2 and err.startswith("error: unknown method 'dro_replya' (did you mean 'dro_replay'?); known: ")
    code, _, err = cli(capsys, "show", "method")
    assert code == 2 and "clbench show method NAME" in err
    code, _, err = cli(capsys, "show", "metod", "er")
    assert code == 2 and "unknown kind 'metod' (did you mean 'method'?)" in err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    path = write_suite(tmp_path / "bad.yaml", tiny_suite(["zeroshot"], seeds=[1, 1]))
    done = subprocess.run([sys.executable, "-m", "clbench.cli", "validate", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"error: {path}: seeds: seed 1 is listed twice; each seed once\n"


# --- an instant command line: no torch, no open_clip --------------------------------------------------------------

#: runs clbench's CLI with the given arguments, then prints which heavy modules were really imported
#: (lazy_loader puts a stub in sys.modules that imports nothing until first used: that does not count)
LOADED = """
import json, sys
from clbench.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
really = lambda name: type(sys.modules.get(name)).__name__ not in ("NoneType", "_LazyModule")
print(json.dumps({"code": code, "loaded": [m for m in ("torch", "open_clip") if really(m)]}))
"""


def loaded_by(*args) -> list[str]:
    """The heavy modules ``clbench ARGS`` imports, run in a fresh interpreter; asserts it exits 0."""
    done = subprocess.run([sys.executable, "-c", LOADED, *map(str, args)], capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr
    return result["loaded"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A suite file and its results folder with every cell done (one zeroshot cell)."""
    from clbench import run_suite

    folder = tmp_path_factory.mktemp("instant")
    path = write_suite(folder / "suite.yaml", tiny_suite(["zeroshot"]))
    summary = run_suite(path, folder / "out", progress=False)
    assert summary.ok and len(summary.records) == 1
    return path, folder / "out", summary.records[0]["cell_id"]


def test_help_table_show_plot_import_no_torch(finished):
    _, out, cell_id = finished
    for args in (["--help"], ["table", out], ["show", out / cell_id], ["plot", out, "--no-heatmaps"],
                 ["report", out, "-o", out / "report.html"]):
        assert loaded_by(*args) == [], args


def test_validate_list_and_a_run_with_nothing_to_do_build_no_model(finished):
    suite, out, _ = finished
    for args in (["validate", suite], ["list", "methods"], ["run", suite, "--results", out]):
        assert "open_clip" not in loaded_by(*args), args


def test_validate_list_and_a_run_with_nothing_to_do_import_no_torch(finished):
    suite, out, _ = finished
    paper = Path(__file__).parent.parent / "suites" / "paper.yaml"  # every built-in method, ImageNet and DomainNet
    for args in (["validate", suite], ["validate", paper], ["list", "methods"], ["list", "datasets"],
                 ["list", "methods", "--params"], ["show", "method", "dro_replay"], ["run", suite, "--results", out]):
        assert loaded_by(*args) == [], args


def test_main_takes_the_plugins_to_use(tmp_path, capsys, plugins):
    class Shy(Method):
        """Zero-shot under another name, known only to the plugins given to main."""

        name = "shy"

    class Plugin:
        @hookimpl
        def clbench_add_methods(self, register):
            register(Shy)

    plugins.pm.register(Plugin())
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["shy"]))
    code, out, _ = cli(capsys, "validate", path, plugins=plugins)
    assert code == 0 and "1 cells" in out
    code, out, _ = cli(capsys, "list", "methods", plugins=plugins)
    assert code == 0 and any(line.startswith("shy ") for line in out.splitlines())
    code, _, err = cli(capsys, "validate", path)  # the process's plugins know no 'shy'
    assert code == 2 and "unknown method 'shy'" in err

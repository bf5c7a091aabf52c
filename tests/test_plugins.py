import inspect
import textwrap

import pytest

from clbench import hookspecs
from clbench.errors import UserError
from clbench.plugins import BUILTIN_PLUGINS, Plugins, make_plugin_manager
from clbench.registry import Registry
from clbench.testing import tiny_suite, write_suite

PLUGIN_SOURCE = '''
"""A method package that lives outside clbench."""
import torch

from clbench import Method, Params, hookimpl


class SharpParams(Params):
    sharpness: float = 2.0


class SharpZeroShot(Method):
    """Zero-shot CLIP with sharpened scores; trains nothing."""

    name = "sharp_zeroshot"
    Params = SharpParams
    trains = False

    def predict(self, images, classes):
        return self.params.sharpness * self.learner.zero_shot_logits(images, classes)

    def record_extras(self):
        return {"sharpness": self.params.sharpness}


@hookimpl
def clbench_add_methods(register):
    register(SharpZeroShot)
'''


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """An installed third-party package: its module and a dist-info with a clbench entry point."""
    site = tmp_path / "site"
    (site / "clbench_sharp").mkdir(parents=True)
    (site / "clbench_sharp" / "__init__.py").write_text(PLUGIN_SOURCE)
    info = site / "clbench_sharp-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clbench-sharp\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text("[clbench]\nsharp = clbench_sharp\n")
    (info / "top_level.txt").write_text("clbench_sharp\n")
    monkeypatch.syspath_prepend(str(site))
    import importlib

    importlib.invalidate_caches()
    yield site
    import sys

    sys.modules.pop("clbench_sharp", None)


def test_builtins_are_declared_as_entry_points():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["clbench"]
    assert declared == dict(BUILTIN_PLUGINS)


def test_builtin_registries_and_origins(plugins):
    assert {"zeroshot", "finetune"} <= set(plugins.methods.names())
    assert plugins.methods.entry("finetune").origin == "clbench"
    assert "synthetic" in plugins.datasets and "local" in plugins.executors


def test_third_party_method_is_discovered_listed_and_run(third_party, tmp_path, capsys):
    from clbench import plugins as plugins_module
    from clbench.cli import main
    from clbench.results import ResultStore

    plugins_module.reset_plugins()
    try:
        plugins = plugins_module.get_plugins()
        assert plugins.methods.entry("sharp_zeroshot").origin == "clbench-sharp"
        with pytest.raises(SystemExit):
            main(["list", "methods"])
        listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sharp_zeroshot")]
        assert listed and "clbench-sharp" in listed[0]

        suite = write_suite(tmp_path / "s.yaml", tiny_suite([{"name": "sharp_zeroshot", "sharpness": [1.0, 3.0]}]))
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(suite), "--results", str(tmp_path / "out")])
        assert exit_info.value.code == 0
        records = list(ResultStore(tmp_path / "out").records())
        assert sorted(r["method_state"]["sharpness"] for r in records) == [1.0, 3.0]
        assert all(r["status"] == "done" and r["method"] == "sharp_zeroshot" for r in records)
    finally:
        plugins_module.reset_plugins()


def test_autoload_can_be_disabled(third_party, monkeypatch):
    monkeypatch.setenv("CLBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = Plugins(make_plugin_manager())
    assert "zeroshot" in plugins.methods  # built-ins always load
    with pytest.raises(UserError, match="unknown method 'sharp_zeroshot'"):
        plugins.methods.get("sharp_zeroshot")


def test_hook_calls_can_be_traced(monkeypatch, capsys):
    monkeypatch.setenv("CLBENCH_TRACE_PLUGINS", "1")
    Plugins(make_plugin_manager()).methods
    assert "clbench_add_methods" in capsys.readouterr().err


def test_every_hook_is_documented():
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("clbench_")]
    assert len(specs) >= 7
    for spec in specs:
        assert spec.__doc__ and len(spec.__doc__.strip()) > 20, spec.__name__
        for param in inspect.signature(spec).parameters:
            assert f":param {param}:" in spec.__doc__, (spec.__name__, param)


def test_every_event_hook_fires_during_a_run(tmp_path, plugins):
    from clbench import hookimpl
    from clbench.cli import main
    from clbench import plugins as plugins_module

    calls = []

    class Recorder:
        @hookimpl
        def clbench_run_start(self, suite, results_dir, cells):
            calls.append(("run_start", len(cells)))

        @hookimpl
        def clbench_experience_end(self, cell, step, acc_row, learner):
            calls.append(("experience_end", step))

        @hookimpl
        def clbench_cell_end(self, cell, record):
            calls.append(("cell_end", record["status"]))

        @hookimpl
        def clbench_run_end(self, suite, results_dir, summary):
            calls.append(("run_end", summary["done"]))

    plugins.pm.register(Recorder())
    plugins_module._default = plugins
    try:
        suite = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"]))
        with pytest.raises(SystemExit):
            main(["run", str(suite), "--results", str(tmp_path / "out")])
    finally:
        plugins_module.reset_plugins()
    assert calls == [("run_start", 1), ("experience_end", 0), ("experience_end", 1), ("experience_end", 2), ("cell_end", "done"), ("run_end", 1)]


def test_registry_did_you_mean_and_duplicates():
    reg = Registry("method")
    reg.register("dro_replay", object, "a")
    with pytest.raises(UserError, match=r"unknown method 'dro_rplay' \(did you mean 'dro_replay'\?\)"):
        reg.get("dro_rplay")
    with pytest.raises(UserError, match="registered twice"):
        reg.register("dro_replay", int, "b")

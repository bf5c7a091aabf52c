import inspect

import pytest

from clbench import hookimpl, hookspecs
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


def install(site, monkeypatch, source: str, module: str = "clbench_sharp", dist: str = "clbench-sharp", entry: str = "sharp"):
    """Install ``source`` as package ``module`` of distribution ``dist`` with a clbench entry point ``entry``."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(source)
    info = site / f"{module}-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(f"[clbench]\n{entry} = {module}\n")
    (info / "top_level.txt").write_text(f"{module}\n")
    monkeypatch.syspath_prepend(str(site))
    import importlib

    importlib.invalidate_caches()


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """An installed third-party package: its module and a dist-info with a clbench entry point."""
    site = tmp_path / "site"
    install(site, monkeypatch, PLUGIN_SOURCE)
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
    suite = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"]))
    with pytest.raises(SystemExit):
        main(["run", str(suite), "--results", str(tmp_path / "out")], plugins=plugins)
    assert calls == [("run_start", 1), ("experience_end", 0), ("experience_end", 1), ("experience_end", 2), ("cell_end", "done"), ("run_end", 1)]


def test_registry_did_you_mean_and_duplicates():
    reg = Registry("method")
    reg.register("dro_replay", object, "a")
    with pytest.raises(UserError, match=r"unknown method 'dro_rplay' \(did you mean 'dro_replay'\?\)"):
        reg.get("dro_rplay")
    with pytest.raises(UserError, match="registered twice"):
        reg.register("dro_replay", int, "b")


# --- one plugin shape; broken plugins fail fast --------------------------------

KIND_BASES = {"methods": "clbench.method.Method", "datasets": "clbench.dataset_plugin.DatasetPlugin",
              "executors": "clbench.executors.Executor", "loggers": "clbench.loggers.Logger"}


def _base(path: str):
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("kind", KIND_BASES)
def test_every_registered_plugin_is_a_subclass_of_its_kinds_base_named_by_its_class(plugins, kind):
    base = _base(KIND_BASES[kind])
    entries = list(plugins.registry(kind))
    assert entries
    for entry in entries:
        assert isinstance(entry.obj, type) and issubclass(entry.obj, base), entry.name
        assert entry.obj.name == entry.name


def test_every_builtin_dataset_declares_options_it_has(plugins):
    from clbench.dataset_plugin import RUNTIME_OPTIONS

    for entry in plugins.datasets:
        cls = entry.obj
        fields = cls.Options.model_fields
        assert cls.input_size_option is None or cls.input_size_option in fields, entry.name
        assert set(RUNTIME_OPTIONS) <= cls.runtime_option_names()
        if "image_size" in fields and fields["image_size"].default is None:  # decodes files at the model's size
            assert cls.input_size_option == "image_size", entry.name


class MisspelledHook:
    """A plugin whose hook name has a typo: it would never be called."""

    @hookimpl
    def clbench_add_dataset(self, register):
        pass


def test_a_misspelled_hook_is_one_line_naming_the_module_and_the_hook():
    pm = make_plugin_manager()
    pm.register(MisspelledHook())
    with pytest.raises(UserError) as info:
        Plugins(pm)
    message = str(info.value)
    assert "\n" not in message
    assert "module tests.test_plugins" in message or "module test_plugins" in message
    assert "unknown hook 'clbench_add_dataset' (did you mean 'clbench_add_datasets'?)" in message


def test_a_misspelled_hook_in_an_installed_package_names_its_distribution(tmp_path, monkeypatch):
    import sys

    source = "from clbench import hookimpl\n\n\n@hookimpl\ndef clbench_run_ends(suite, results_dir, summary):\n    pass\n"
    install(tmp_path / "site", monkeypatch, source, module="clbench_typo", dist="clbench-typo", entry="typo")
    try:
        with pytest.raises(UserError) as info:
            make_plugin_manager(autoload=True)
    finally:
        sys.modules.pop("clbench_typo", None)
    message = str(info.value)
    assert message.startswith("plugin package clbench-typo (module clbench_typo): unknown hook 'clbench_run_ends'")
    assert "CLBENCH_BLOCK_PLUGINS=typo" in message


def test_a_hookimpl_taking_arguments_its_spec_lacks_names_the_distribution_and_hook(tmp_path, monkeypatch):
    import sys

    source = "from clbench import hookimpl\n\n\n@hookimpl\ndef clbench_cell_end(cell, record, extra):\n    pass\n"
    install(tmp_path / "site", monkeypatch, source, module="clbench_args", dist="clbench-args", entry="args")
    try:
        with pytest.raises(UserError) as info:
            make_plugin_manager(autoload=True)
    finally:
        sys.modules.pop("clbench_args", None)
    message = str(info.value)
    assert "\n" not in message and "package clbench-args" in message and "hook 'clbench_cell_end'" in message
    assert "extra" in message


class NotADataset:
    """A dataset class that forgot its base."""

    name = "orphan"

    @classmethod
    def build(cls, options):
        raise AssertionError("never built")


class WrongBase:
    @hookimpl
    def clbench_add_datasets(self, register):
        register(NotADataset)


class OldShape:
    @hookimpl
    def clbench_add_datasets(self, register):
        register("orphan", NotADataset)


class Nameless:
    @hookimpl
    def clbench_add_loggers(self, register):
        from clbench.loggers import Logger

        class Quiet(Logger):
            pass

        register(Quiet)


@pytest.mark.parametrize("plugin, kind, expected", [
    (WrongBase(), "datasets", "clbench_add_datasets registered class tests.test_plugins.NotADataset, which is not a subclass of "
                              "clbench.DatasetPlugin"),
    (OldShape(), "datasets", "register takes the dataset class only"),
    (Nameless(), "loggers", "needs a 'name' class attribute that is a Python identifier (got '')"),
])
def test_a_registered_object_of_the_wrong_shape_is_one_line_naming_its_module(plugin, kind, expected):
    pm = make_plugin_manager()
    pm.register(plugin)
    plugins = Plugins(pm)
    with pytest.raises(UserError) as info:
        plugins.registry(kind)
    message = str(info.value)
    assert "\n" not in message and expected.replace("tests.test_plugins", type(plugin).__module__) in message
    if not isinstance(plugin, OldShape):
        assert f"module {type(plugin).__module__}" in message


def test_a_blocked_plugin_is_not_loaded(third_party, monkeypatch):
    monkeypatch.setenv("CLBENCH_BLOCK_PLUGINS", "sharp, ray")
    plugins = Plugins(make_plugin_manager())
    assert "sharp_zeroshot" not in plugins.methods and "zeroshot" in plugins.methods
    assert "ray" not in plugins.executors and "local" in plugins.executors  # a built-in's name blocks the built-in
    monkeypatch.setenv("CLBENCH_BLOCK_PLUGINS", "")
    assert "sharp_zeroshot" in Plugins(make_plugin_manager()).methods


def test_blocking_a_plugin_no_one_has_is_an_error(monkeypatch):
    monkeypatch.setenv("CLBENCH_BLOCK_PLUGINS", "slrum")
    with pytest.raises(UserError, match="CLBENCH_BLOCK_PLUGINS: unknown plugin 'slrum' \\(did you mean 'slurm'\\?\\); known: .*local"):
        make_plugin_manager()


def test_blocking_lets_a_broken_plugin_be_ruled_out(tmp_path, monkeypatch):
    import sys

    source = "from clbench import hookimpl\n\n\n@hookimpl\ndef clbench_run_ends(suite, results_dir, summary):\n    pass\n"
    install(tmp_path / "site", monkeypatch, source, module="clbench_typo", dist="clbench-typo", entry="typo")
    monkeypatch.setenv("CLBENCH_BLOCK_PLUGINS", "typo")
    try:
        assert "zeroshot" in Plugins(make_plugin_manager(autoload=True)).methods
    finally:
        sys.modules.pop("clbench_typo", None)


def test_every_hookspec_is_typed():
    for name, spec in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("clbench_"):
            assert "return" in spec.__annotations__, name
            assert set(inspect.signature(spec).parameters) <= set(spec.__annotations__), name


def test_unknown_line_is_the_one_shape_of_every_unknown_name():
    from clbench.registry import unknown_line

    assert unknown_line("dataset", "cifar", ["cifar100", "synthetic"]) == \
        "unknown dataset 'cifar' (did you mean 'cifar100'?); known: cifar100, synthetic"
    assert unknown_line("logger", "x", []) == "unknown logger 'x'; known: none"


def test_a_plugin_package_that_fails_to_import_is_one_line_naming_it(tmp_path, monkeypatch):
    import sys

    install(tmp_path / "site", monkeypatch, "import no_such_module_anywhere\n", module="clbench_gone", dist="clbench-gone", entry="gone")
    try:
        with pytest.raises(UserError) as info:
            make_plugin_manager(autoload=True)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("plugin 'gone' (package clbench-gone) cannot be imported (ModuleNotFoundError: ")
        assert message.endswith("CLBENCH_BLOCK_PLUGINS=gone")
        monkeypatch.setenv("CLBENCH_BLOCK_PLUGINS", "gone")
        assert "zeroshot" in Plugins(make_plugin_manager(autoload=True)).methods
    finally:
        sys.modules.pop("clbench_gone", None)

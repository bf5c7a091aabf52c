"""The built-in methods use exactly the documented Method API, as a third-party package must.

The methods' source is read (AST), not run: every attribute they take from the Learner
(``self.learner.x``, or ``learner.x`` after ``learner = self.learner``) must be in
``Learner.METHOD_API``, every attribute of a snapshot in ``FrozenModel.METHOD_API``, and
every clbench module they import must be one of the modules documented for plugins.
"""
import ast
from pathlib import Path

import pytest

from clbench.learner import METHOD_API, FrozenModel

ROOT = Path(__file__).resolve().parents[1]
METHOD_FILES = sorted((ROOT / "methods").glob("*.py")) + [ROOT / "clbench" / "replay.py"]
#: what docs/writing_methods.md lists as the modules a method may import
PLUGIN_MODULES = {"clbench", "clbench.replay", "clbench.buffer", "clbench.losses", "clbench.facts", "clbench.memory",
                  "clbench.datasets"}


def _is_learner(node: ast.AST, aliases: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in aliases
    return isinstance(node, ast.Attribute) and node.attr == "learner" and isinstance(node.value, ast.Name) and node.value.id == "self"


def uses(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(Learner attributes, snapshot attributes, imported clbench modules) used in one file."""
    tree = ast.parse(path.read_text())
    learner_aliases = {"learner"}
    snapshots: set[str] = set()  # self.<name> assigned from learner.snapshot()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr == "snapshot":
                snapshots |= {t.attr for t in node.targets if isinstance(t, ast.Attribute)}
    learner_attrs, snapshot_attrs, modules = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if _is_learner(node.value, learner_aliases):
                learner_attrs.add(node.attr)
            value = node.value
            if isinstance(value, ast.Attribute) and value.attr in snapshots and isinstance(value.value, ast.Name) and value.value.id == "self":
                snapshot_attrs.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "clbench":
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules |= {a.name for a in node.names if a.name.split(".")[0] == "clbench"}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr"):
            assert not (node.args and _is_learner(node.args[0], learner_aliases)), f"{path.name}: reflective access to the Learner"
    return learner_attrs, snapshot_attrs, modules


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.name)
def test_methods_reach_the_learner_only_through_its_documented_surface(path):
    learner_attrs, snapshot_attrs, modules = uses(path)
    assert learner_attrs <= set(METHOD_API), f"{path.name} uses {sorted(learner_attrs - set(METHOD_API))}"
    assert snapshot_attrs <= set(FrozenModel.METHOD_API), f"{path.name} uses {sorted(snapshot_attrs - set(FrozenModel.METHOD_API))}"
    if path.parent.name == "methods":
        assert modules <= PLUGIN_MODULES, f"{path.name} imports {sorted(modules - PLUGIN_MODULES)}"


def test_the_scan_sees_what_it_must():
    learner_attrs, snapshot_attrs, modules = uses(ROOT / "methods" / "icarl.py")
    assert {"stream", "class_features", "encode_images", "snapshot", "logit_scale", "features"} <= learner_attrs
    assert {"class_features", "encode_images", "logit_scale"} <= snapshot_attrs
    assert {"clbench", "clbench.replay", "clbench.buffer", "clbench.losses"} <= modules


def test_every_documented_name_exists_and_is_documented():
    from clbench.learner import Learner

    for name in METHOD_API:
        if name in ("device", "seed", "stream", "dataset"):  # attributes set in __init__, described in the class docstring
            assert name in Learner.__doc__
            continue
        member = getattr(Learner, name)
        doc = (member.fget if isinstance(member, property) else member).__doc__
        assert doc and len(doc) > 20, name
    text = (ROOT / "docs" / "writing_methods.md").read_text()
    for name in METHOD_API:
        assert f"`{name}" in text, f"docs/writing_methods.md does not document learner.{name}"


def test_a_method_paired_with_a_scenario_it_does_not_support_is_refused_by_validate(tmp_path, plugins):
    from clbench import Method
    from clbench.errors import UserError
    from clbench.suite import load_suite
    from clbench.testing import TINY_STREAM, tiny_suite, write_suite

    class ClassesOnly(Method):
        name = "classes_only"
        scenarios = ("class_incremental",)

    plugins.methods.register(ClassesOnly.name, ClassesOnly, "test")
    domain_stream = {**TINY_STREAM, "scenario": "domain_incremental", "world_domains": ["clean", "noisy"]}
    domain_stream.pop("steps")
    ok = write_suite(tmp_path / "ok.yaml", tiny_suite(["classes_only"]))
    assert len(load_suite(ok, plugins).cells) == 1
    bad = write_suite(tmp_path / "bad.yaml", tiny_suite(["zeroshot", "classes_only"], streams=[domain_stream]))
    with pytest.raises(UserError) as info:
        load_suite(bad, plugins)
    assert str(info.value) == (f"{bad}: methods[1].name: method 'classes_only' is built for class_incremental streams, "
                               f"not stream 'synthetic-di' (domain_incremental); pair it with another stream")


def test_no_grad_switches_gradients_off_only_while_the_function_runs():
    import torch

    from clbench import no_grad

    x = torch.ones(2, requires_grad=True)

    @no_grad
    def double(t):
        """Twice t."""
        return 2 * t

    assert not double(x).requires_grad and (2 * x).requires_grad
    assert double.__doc__ == "Twice t." and double.__name__ == "double"

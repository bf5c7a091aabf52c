"""Helpers for testing clbench and method plugins: a tiny stream, a tiny model, one call.

A plugin author's test can be as short as::

    from clbench.testing import run_method
    from my_package import MyMethod

    def test_my_method_learns():
        record = run_method(MyMethod, {"alpha": 0.5})
        assert record["status"] == "done"

The same helpers are pytest fixtures (``clbench_run_method``, ``clbench_tiny_suite``)
once clbench is installed, through the ``pytest11`` entry point.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a download in a test

TINY_MODEL = {"arch": "clbench-tiny-32", "pretrained": None}
TINY_TRAIN = {"epochs": 1, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.0}
TINY_STREAM = {
    "dataset": "synthetic", "scenario": "class_incremental", "steps": 3, "num_classes": 6,
    "train_per_class": 12, "test_per_class": 6, "world_domains": ["clean"],
}


def tiny_suite(methods, seeds=(0,), streams=None, name: str = "tiny", **extra) -> dict:
    """A suite mapping that runs in seconds on a CPU."""
    suite = {
        "name": name, "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN),
        "streams": streams or [dict(TINY_STREAM)], "methods": list(methods), "seeds": list(seeds),
    }
    suite.update(extra)
    return suite


def write_suite(path, suite: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def run_method(method_cls, params: dict | None = None, seed: int = 0, stream: dict | None = None, plugins=None, train: dict | None = None) -> dict:
    """Run ``method_cls`` (registered or not) on the tiny stream; return its record.

    ``train`` overrides keys of the tiny training settings (e.g. ``{"epochs": 5}``).
    """
    import tempfile

    from .plugins import Plugins, make_plugin_manager
    from .runner import run_cell
    from .suite import load_suite

    plugins = plugins or Plugins(make_plugin_manager())
    if method_cls.name not in plugins.methods:
        plugins.methods.register(method_cls.name, method_cls, plugins.origin_of(method_cls))
    suite = tiny_suite([{"name": method_cls.name, **(params or {})}], seeds=[seed], streams=[stream or dict(TINY_STREAM)])
    suite["train"].update(train or {})
    with tempfile.TemporaryDirectory() as tmp:
        cells = load_suite(write_suite(Path(tmp) / "suite.yaml", suite), plugins).cells
    return run_cell(cells[0], plugins)

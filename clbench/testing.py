"""Helpers for testing clbench and method plugins: a tiny stream, a tiny model, one call.

A plugin author's test can be as short as::

    from clbench.testing import run_method
    from my_package import MyMethod

    def test_my_method_learns():
        record = run_method(MyMethod, {"alpha": 0.5})
        assert record["status"] == "done"

The same helpers are pytest fixtures (``clbench_run_method``, ``clbench_tiny_suite``)
once clbench is installed, through the ``pytest11`` entry point. Importing this
module (as pytest does in every session once clbench is installed) changes no
environment variable and imports no torch: only a helper that runs a cell does,
and it sets ``HF_HUB_OFFLINE=1`` for that run only.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import yaml

TINY_MODEL = {"arch": "clbench-tiny-32", "pretrained": None}
TINY_TRAIN = {"epochs": 1, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.0}
TINY_STREAM = {
    "dataset": "synthetic", "scenario": "class_incremental", "steps": 3, "num_classes": 6,
    "train_per_class": 12, "test_per_class": 6, "world_domains": ["clean"],
}


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` while the block runs, unless the caller set that variable; restored afterwards.

    A test then never waits on a download (a failed one retries for about 50 s).
    """
    if "HF_HUB_OFFLINE" in os.environ:
        yield
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        os.environ.pop("HF_HUB_OFFLINE", None)


def tiny_suite(methods, seeds=(0,), streams=None, name: str = "tiny", **extra) -> dict:
    """A suite mapping that runs in seconds on a CPU: the tiny random-init model, ``TINY_TRAIN`` and ``TINY_STREAM``.

    ``methods``: suite method entries (names or mappings); ``seeds``, ``streams`` (default
    ``[TINY_STREAM]``) and ``name`` as the suite keys; ``extra``: any other top-level keys.
    """
    suite = {
        "name": name, "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN),
        "streams": streams or [dict(TINY_STREAM)], "methods": list(methods), "seeds": list(seeds),
    }
    suite.update(extra)
    return suite


def write_suite(path, suite: dict) -> Path:
    """Write the ``suite`` mapping as YAML to ``path``; returns the path."""
    path = Path(path)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def run_method(method_cls, params: dict | None = None, seed: int = 0, stream: dict | None = None, plugins=None, train: dict | None = None) -> dict:
    """Run ``method_cls`` (registered or not) on the tiny stream; return its record.

    ``params``: the method's hyper-parameters (as a suite entry gives them); ``stream``: a stream
    mapping instead of ``TINY_STREAM``; ``plugins``: a ``clbench.plugins.Plugins`` to register the
    method in (default: a fresh one); ``train`` overrides keys of the tiny training settings
    (e.g. ``{"epochs": 5}``). The cell runs with ``HF_HUB_OFFLINE=1`` (see :func:`hub_offline`).
    A method that fails gives a record with ``status: failed``; bad ``params`` raise ``UserError``.
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
    with hub_offline():
        return run_cell(cells[0], plugins)

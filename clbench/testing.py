"""Helpers for testing clbench and method plugins: a tiny stream, a tiny model, one call.

A plugin author's test can be as short as::

    from clbench.testing import run_method
    from my_package import MyMethod

    def test_my_method_learns():
        record = run_method(MyMethod, {"alpha": 0.5})
        assert record["status"] == "done"

and one call checks that the method resumes after an interruption exactly as
if it had never stopped (its ``state_dict``/``load_state_dict`` keep all it needs)::

    from clbench.testing import check_resume

    def test_my_method_resumes():
        check_resume(MyMethod, {"alpha": 0.5}, stop_after=0)

The same helpers are pytest fixtures (``clbench_run_method``, ``clbench_tiny_suite``,
``clbench_check_resume``) once clbench is installed, through the ``pytest11`` entry point. Importing this
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


def tiny_suite(methods, seeds=(0,), streams=None, name: str = "tiny", train: dict | None = None, **extra) -> dict:
    """A suite mapping that runs in seconds on a CPU: the tiny random-init model, ``TINY_TRAIN`` and ``TINY_STREAM``.

    Args:
        methods: suite method entries (names or mappings).
        seeds, streams, name: the suite keys (``streams`` defaults to ``[TINY_STREAM]``).
        train: keys merged over ``TINY_TRAIN`` (``{"epochs": 5}`` keeps the tiny ``lr`` and
            ``batch_size``), the same rule as :func:`run_method`.
        extra: any other top-level keys, as given.
    """
    suite = {
        "name": name, "model": dict(TINY_MODEL), "train": {**TINY_TRAIN, **(train or {})},
        "streams": streams or [dict(TINY_STREAM)], "methods": list(methods), "seeds": list(seeds),
    }
    suite.update(extra)
    return suite


def write_suite(path, suite: dict) -> Path:
    """Write the ``suite`` mapping as YAML to ``path``; returns the path."""
    path = Path(path)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _tiny_cell(method_cls, params, seed, stream, plugins, train, folder: Path):
    """The one cell of ``method_cls`` on the tiny suite, and the plugins it is registered in."""
    from .plugins import Plugins, make_plugin_manager
    from .suite import load_suite

    plugins = plugins or Plugins(make_plugin_manager())
    if method_cls.name not in plugins.methods:
        plugins.methods.register(method_cls.name, method_cls, plugins.origin_of(method_cls))
    suite = tiny_suite([{"name": method_cls.name, **(params or {})}], seeds=[seed], streams=[stream or dict(TINY_STREAM)],
                       train=train)
    return load_suite(write_suite(folder / "suite.yaml", suite), plugins).cells[0], plugins


def run_method(method_cls, params: dict | None = None, seed: int = 0, stream: dict | None = None, plugins=None, train: dict | None = None) -> dict:
    """Run ``method_cls`` (registered or not) on the tiny stream; return its record.

    Args:
        method_cls: a ``clbench.Method`` subclass.
        params: the method's hyper-parameters (as a suite entry gives them).
        seed: the cell's seed.
        stream: a stream mapping instead of ``TINY_STREAM``.
        plugins: a ``clbench.plugins.Plugins`` to register the method in (default: a fresh one).
        train: keys merged over the tiny training settings (``{"epochs": 5}`` keeps the tiny
            ``lr`` and ``batch_size``), the same rule as :func:`tiny_suite`.

    The cell runs with ``HF_HUB_OFFLINE=1`` (see :func:`hub_offline`) and without checkpoints, so
    ``state_dict()`` is not called: :func:`check_resume` tests saving and resuming.

    Raises:
        UserError: bad ``params``. A method that fails otherwise gives a record with ``status: failed``.
    """
    import tempfile

    from .runner import run_cell

    with tempfile.TemporaryDirectory() as tmp:
        cell, plugins = _tiny_cell(method_cls, params, seed, stream, plugins, train, Path(tmp))
    with hub_offline():
        return run_cell(cell, plugins)


VOLATILE = ("cost", "manifest")  # wall time, throughput, timestamps, where the cell resumed: allowed to differ after a resume


def stable(record: dict) -> dict:
    """``record`` without the keys a resumed run may change (``VOLATILE``: cost and manifest)."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


_MISSING = object()


def first_difference(a, b, path: str = "record", atol: float = 0.0) -> tuple[str, object, object] | None:
    """The first place where ``a`` and ``b`` (JSON-like values) differ, as ``(path, a_part, b_part)``, or None.

    ``path`` names the roots; a part's path indexes it (``record['acc_matrix'][2][0]``). A key
    only one side has gives ``<missing>`` on the other; lists of different lengths differ at
    ``len(…)``. Floats equal within ``atol`` (absolute) are the same, and NaN equals NaN.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(key, _MISSING), b.get(key, _MISSING), f"{path}[{key!r}]", atol)
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]", atol)
            if found:
                return found
        return None if len(a) == len(b) else (f"len({path})", len(a), len(b))
    if a is _MISSING or b is _MISSING:
        return path, "<missing>" if a is _MISSING else a, "<missing>" if b is _MISSING else b
    if _is_number(a) and _is_number(b):
        return None if a == b or (a != a and b != b) or abs(a - b) <= atol else (path, a, b)
    return None if a == b else (path, a, b)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Interrupted(KeyboardInterrupt):
    """Stops the cell like Ctrl-C (run_cell passes it through untouched, its checkpoint saved)."""


def check_resume(method_cls, params: dict | None = None, stop_after: int = 0, seed: int = 0, stream: dict | None = None,
                 train: dict | None = None, plugins=None, atol: float = 0.0) -> dict:
    """Check that ``method_cls`` resumes after an interruption exactly as if it had run through.

    Runs the method's tiny cell (as :func:`run_method` builds it) once uninterrupted, once
    stopped like Ctrl-C right after experience ``stop_after`` is reported done (its checkpoint
    saved), then resumes that one from its checkpoint, and compares the two records without
    ``cost`` and ``manifest`` (:func:`stable`). The built-in methods pass this with records
    exactly equal on the CPU; a method that keeps part of its state outside ``state_dict()``
    (or restores it wrongly in ``load_state_dict``) shows up as a differing accuracy, metric
    or method_state.

    Args:
        method_cls: a ``clbench.Method`` subclass.
        params, seed, stream, train, plugins: as :func:`run_method`.
        stop_after: the experience after which the cell is stopped: 0 up to the number of
            experiences minus 2 (no checkpoint follows the last one).
        atol: floats in the records this close count as equal (0: exactly; a GPU's
            nondeterministic kernels may need a little).

    Returns:
        The resumed record.

    Raises:
        AssertionError: a run failed, the cell did not resume from its checkpoint, or the
            records differ; the message names the first differing key path and both values.
        ValueError: ``stop_after`` outside the experiences that save a checkpoint.
        UserError: bad ``params``, or a ``state_dict()`` a checkpoint cannot hold.
    """
    import tempfile

    from .runner import run_cell

    if stop_after < 0:
        raise ValueError(f"stop_after must be 0 or more, not {stop_after}")
    name = method_cls.name
    with tempfile.TemporaryDirectory() as tmp, hub_offline():
        cell, plugins = _tiny_cell(method_cls, params, seed, stream, plugins, train, Path(tmp))
        whole = run_cell(cell, plugins, checkpoints=Path(tmp) / "whole")
        if whole["status"] != "done":
            raise AssertionError(f"method '{name}': the uninterrupted run failed: {whole['error']}")
        steps = len(whole["experiences"])
        if stop_after > steps - 2:
            raise ValueError(f"stop_after={stop_after}: the cell has {steps} experiences and saves a checkpoint after "
                             f"experiences 0 to {steps - 2} only")

        def stop(report):
            plugins.experience_end(report)
            if report.step == stop_after:
                raise _Interrupted

        try:
            stopped = run_cell(cell, plugins, on_experience=stop, checkpoints=Path(tmp) / "resumed")
        except _Interrupted:
            pass
        else:
            raise AssertionError(f"method '{name}': the run to interrupt ended before experience {stop_after} was done: "
                                 f"{stopped.get('error')}")
        resumed = run_cell(cell, plugins, checkpoints=Path(tmp) / "resumed")
    if resumed["status"] != "done":
        raise AssertionError(f"method '{name}': the run resumed after experience {stop_after} failed: {resumed['error']}")
    if resumed["cost"].get("resumed_at_experience") != stop_after + 1:
        raise AssertionError(f"method '{name}': the second run did not resume from the checkpoint saved after "
                             f"experience {stop_after}; it started over")
    # what a method's state drives first (its own state, the losses, the accuracies), so the message names the
    # cause rather than a summary metric that merely follows from it
    first = ("method_state", "train_loss", "acc_matrix", "buffer", "memory")
    order = lambda r: {**{k: r[k] for k in first if k in r}, **stable(r)}  # noqa: E731
    found = first_difference(order(whole), order(resumed), atol=atol)
    if found:
        where, expected, got = found
        raise AssertionError(f"method '{name}': resumed after experience {stop_after}, the record differs from an "
                             f"uninterrupted run at {where}: {expected!r} (uninterrupted) != {got!r} (resumed); "
                             "state_dict()/load_state_dict() likely miss part of the method's state")
    return resumed

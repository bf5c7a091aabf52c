"""clbench: benchmark continual-learning methods for CLIP models.

Plugin authors need only this namespace::

    from clbench import Batch, Method, Params, hookimpl

and the command line's functions are here too (docs/python_api.md)::

    summary = clbench.run_suite("suites/smoke.yaml")

Every name below but ``hookimpl`` and ``__version__`` is imported on first use
(PEP 562), so ``import clbench`` stays instant and never imports torch.
"""
import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("clbench")

#: exported name -> the module that defines it
_LAZY = {
    "Batch": "clbench.batch",
    "DatasetPlugin": "clbench.dataset_plugin",
    "Method": "clbench.method",
    "Params": "clbench.method",
    "no_grad": "clbench.method",
    "to_device": "clbench.sync_check",
    "no_host_sync": "clbench.sync_check",
    "allow_host_sync": "clbench.sync_check",
    "sum_over_ranks": "clbench.distributed",
    "note_contrast": "clbench.contrast_stats",
    "note_class_mass": "clbench.contrast_stats",
    "RunSummary": "clbench.api",
    "run_suite": "clbench.api",
    "validate_suite": "clbench.api",
    "leaderboard": "clbench.api",
    "write_plots": "clbench.api",
    "write_report": "clbench.api",
}

__all__ = ["Batch", "DatasetPlugin", "Method", "Params", "no_grad", "to_device", "no_host_sync", "allow_host_sync", "sum_over_ranks", "note_contrast", "note_class_mass",
           "RunSummary", "run_suite", "validate_suite", "leaderboard",
           "write_plots", "write_report", "hookimpl", "__version__"]  # every lazy name, and the two defined here


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        if name != "leaderboard":  # clbench.leaderboard is also a module, which replaces the attribute once imported
            globals()[name] = value
        return value
    raise AttributeError(f"module 'clbench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

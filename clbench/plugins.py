"""The plugin manager and the typed facade core code uses instead of ``pm.hook``.

Environment variables:

- ``CLBENCH_DISABLE_PLUGIN_AUTOLOAD=1``: load only clbench's own plugins,
  no third-party entry points (useful to rule a plugin out when debugging).
- ``CLBENCH_TRACE_PLUGINS=1``: print every hook call and its result to stderr.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
from functools import cached_property, lru_cache

import pluggy

from . import hookspecs
from .registry import Registry

# clbench's own plugins, loaded even when autoload is disabled. The names match
# the entry points in pyproject.toml so the entry-point pass skips them.
BUILTIN_PLUGINS = (
    ("zeroshot", "clbench_methods.zeroshot"),
    ("finetune", "clbench_methods.finetune"),
    ("er", "clbench_methods.er"),
    ("icarl", "clbench_methods.icarl"),
    ("gcl_replay", "clbench_methods.gcl_replay"),
    ("dro_replay", "clbench_methods.dro_replay"),
    ("synthetic", "clbench.data.synthetic"),
    ("cifar100", "clbench.data.cifar"),
    ("imagenet", "clbench.data.imagenet"),
    ("domainnet", "clbench.data.domainnet"),
    ("imagefolder", "clbench.data.imagefolder"),
    ("local", "clbench.executors.local"),
    ("ray", "clbench.executors.ray_tasks"),
    ("slurm", "clbench.executors.slurm_jobs"),
    ("loggers", "clbench.loggers.builtin"),
)

DISABLE_AUTOLOAD_ENV = "CLBENCH_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "CLBENCH_TRACE_PLUGINS"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def make_plugin_manager(autoload: bool | None = None) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("clbench")
    pm.add_hookspecs(hookspecs)
    for name, module in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module), name=name)
    if autoload is None:
        autoload = not _truthy(os.environ.get(DISABLE_AUTOLOAD_ENV))
    if autoload:
        pm.load_setuptools_entrypoints("clbench")
    if _truthy(os.environ.get(TRACE_ENV)):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    return pm


@lru_cache(maxsize=1)
def _packages_distributions() -> dict:
    return md.packages_distributions()


class Plugins:
    """What core code knows of plugins: three registries and the run events."""

    def __init__(self, pm: pluggy.PluginManager | None = None):
        self.pm = pm or make_plugin_manager()
        self._dist_of_top_module = self._plugin_distributions()
        from .loggers import Dispatcher

        self.pm.register(Dispatcher(self), name="clbench-logger-dispatch")

    def _plugin_distributions(self) -> dict[str, str]:
        origins = {}
        for plugin, dist in self.pm.list_plugin_distinfo():
            top = getattr(plugin, "__name__", "").split(".")[0]
            if top:
                origins[top] = dist.project_name
        return origins

    def origin_of(self, obj) -> str:
        """The pip distribution that provides ``obj`` (a class or function)."""
        top = (getattr(obj, "__module__", None) or "").split(".")[0]
        if top in self._dist_of_top_module:
            return self._dist_of_top_module[top]
        dists = _packages_distributions().get(top)
        if dists:
            return dists[0]
        if top in ("clbench", "clbench_methods"):
            return "clbench"
        return f"{top or '?'} (not installed)"

    # --- registries ---------------------------------------------------------
    @cached_property
    def methods(self) -> Registry:
        reg: Registry = Registry("method")

        def register(method_cls):
            reg.register(getattr(method_cls, "name", None), method_cls, self.origin_of(method_cls))

        self.pm.hook.clbench_add_methods(register=register)
        return reg

    def _named(self, kind: str, hook) -> Registry:
        """A registry filled by a hook whose ``register`` takes (name, object)."""
        reg: Registry = Registry(kind)
        hook(register=lambda name, obj: reg.register(name, obj, self.origin_of(obj)))
        return reg

    @cached_property
    def datasets(self) -> Registry:
        return self._named("dataset", self.pm.hook.clbench_add_datasets)

    @cached_property
    def executors(self) -> Registry:
        return self._named("executor", self.pm.hook.clbench_add_executors)

    @cached_property
    def loggers(self) -> Registry:
        return self._named("logger", self.pm.hook.clbench_add_loggers)

    def registry(self, kind: str) -> Registry:
        return {"methods": self.methods, "datasets": self.datasets, "executors": self.executors, "loggers": self.loggers}[kind]

    # --- events -------------------------------------------------------------
    def run_start(self, suite, results_dir, cells) -> None:
        self.pm.hook.clbench_run_start(suite=suite, results_dir=results_dir, cells=cells)

    def experience_end(self, report) -> None:
        """Fire ``clbench_experience_end`` from a ``clbench.events.ExperienceEnd``."""
        self.pm.hook.clbench_experience_end(cell=report.cell, step=report.step, acc_row=report.acc_row, learner=report.learner,
                                            train_loss=report.train_loss, test_sizes=report.test_sizes)

    def cell_end(self, cell, record) -> None:
        self.pm.hook.clbench_cell_end(cell=cell, record=record)

    def run_end(self, suite, results_dir, summary) -> None:
        self.pm.hook.clbench_run_end(suite=suite, results_dir=results_dir, summary=summary)


_default: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, built on first use."""
    global _default
    if _default is None:
        _default = Plugins()
    return _default


def reset_plugins() -> None:
    """Forget the cached plugins (tests that install a plugin call this)."""
    global _default
    _default = None

"""The plugin manager and the typed facade core code uses instead of ``pm.hook``.

Every plugin kind has one shape: a class with a ``name``, subclassing the
kind's base (``clbench.Method``, ``clbench.DatasetPlugin``,
``clbench.executors.Executor``, ``clbench.loggers.Logger``), passed to
``register(cls)`` in the kind's ``clbench_add_*`` hook. Broken plugins fail
fast, each with one ``UserError`` line naming the package: a hookimpl whose
name matches no hookspec or whose arguments the spec lacks (when the plugins
load), and a registered object that is not a subclass of its kind's base or
has no valid ``name`` (when the kind's registry is first used).

Environment variables:

- ``CLBENCH_DISABLE_PLUGIN_AUTOLOAD=1``: load only clbench's own plugins,
  no third-party entry points (useful to rule a plugin out when debugging).
- ``CLBENCH_BLOCK_PLUGINS=name1,name2``: do not load the entry points with
  these names (as ``clbench list`` or the package's pyproject.toml names
  them; a built-in's name blocks the built-in); an unknown name is an error.
- ``CLBENCH_TRACE_PLUGINS=1``: print every hook call and its result to stderr.
"""
from __future__ import annotations

import importlib
import inspect
import importlib.metadata as md
import os
import re
import sys
import types
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import UserError
from .registry import Registry, unknown_line

if TYPE_CHECKING:  # pragma: no cover
    from .dataset_plugin import DatasetPlugin
    from .executors import Executor
    from .loggers import Logger
    from .method import Method

# clbench's own plugins, loaded even when autoload is disabled. The names match
# the entry points in pyproject.toml so the entry-point pass skips them.
BUILTIN_PLUGINS = (
    ("zeroshot", "clbench_methods.zeroshot"),
    ("finetune", "clbench_methods.finetune"),
    ("er", "clbench_methods.er"),
    ("icarl", "clbench_methods.icarl"),
    ("gcl_replay", "clbench_methods.gcl_replay"),
    ("dro_replay", "clbench_methods.dro_replay"),
    ("lwf", "clbench_methods.lwf"),
    ("ewc", "clbench_methods.ewc"),
    ("derpp", "clbench_methods.derpp"),
    ("er_ace", "clbench_methods.er_ace"),
    ("gdumb", "clbench_methods.gdumb"),
    ("wise_ft", "clbench_methods.wise_ft"),
    ("simplecil", "clbench_methods.simplecil"),
    ("ranpac", "clbench_methods.ranpac"),
    ("zscl", "clbench_methods.zscl"),
    ("l2p", "clbench_methods.l2p"),
    ("coda_prompt", "clbench_methods.coda_prompt"),
    ("moe_adapters", "clbench_methods.moe_adapters"),
    ("synthetic", "clbench.data.synthetic"),
    ("cifar100", "clbench.data.cifar"),
    ("imagenet", "clbench.data.imagenet"),
    ("domainnet", "clbench.data.domainnet"),
    ("imagefolder", "clbench.data.imagefolder"),
    ("tinyimagenet", "clbench.data.tinyimagenet"),
    ("imagenet_r", "clbench.data.imagenet_r"),
    ("cub200", "clbench.data.cub200"),
    ("core50", "clbench.data.core50"),
    ("torchvision", "clbench.data.torchvision_sets"),
    ("huggingface", "clbench.data.hf_sets"),
    ("local", "clbench.executors.local"),
    ("ray", "clbench.executors.ray_tasks"),
    ("slurm", "clbench.executors.slurm_jobs"),
    ("loggers", "clbench.loggers.builtin"),
)

GROUP = "clbench"
DISABLE_AUTOLOAD_ENV = "CLBENCH_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "CLBENCH_BLOCK_PLUGINS"
TRACE_ENV = "CLBENCH_TRACE_PLUGINS"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def blocked_plugins() -> list[str]:
    """The entry-point names ``CLBENCH_BLOCK_PLUGINS`` blocks (comma-separated; blanks ignored)."""
    return [name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()]


def _entry_point_names() -> list[str]:
    return sorted({ep.name for ep in md.entry_points(group=GROUP)} | {name for name, _ in BUILTIN_PLUGINS})


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, except that a plugin module's module attributes are never inspected as hookimpls.

    pluggy looks at every attribute of a registered module; looking at a lazily imported module
    (``torch = lazy_loader.load("torch")``) would import it, and ``clbench validate`` would pay
    for torch. ``type()`` does not trigger the import, so modules are recognised and skipped.
    """

    def parse_hookimpl_opts(self, plugin, name: str):
        if issubclass(type(inspect.getattr_static(plugin, name, None)), types.ModuleType):
            return None
        return super().parse_hookimpl_opts(plugin, name)


def _import_entry_points(pm: pluggy.PluginManager) -> None:
    """Import every third-party entry point once, so a package that fails to import is one line naming it.

    (pluggy would let the ImportError's traceback through.) Modules stay imported, so pluggy's own
    loading that follows reuses them. Raises UserError.
    """
    for ep in md.entry_points(group=GROUP):
        if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        try:
            ep.load()
        except Exception as exc:  # any failure inside a third-party package's import
            dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0].split(".")[0]
            raise UserError(f"plugin '{ep.name}' (package {dist}) cannot be imported ({type(exc).__name__}: {exc}); "
                            f"fix or uninstall the package, or skip it with {BLOCK_ENV}={ep.name}") from None


def make_plugin_manager(autoload: bool | None = None) -> pluggy.PluginManager:
    """clbench's plugin manager: the hookspecs, the built-in plugins, then (unless disabled) every installed entry point.

    Honours ``CLBENCH_DISABLE_PLUGIN_AUTOLOAD`` (when ``autoload`` is None), ``CLBENCH_BLOCK_PLUGINS`` and
    ``CLBENCH_TRACE_PLUGINS``. Raises UserError for a blocked name that no plugin has, and for a plugin whose
    hookimpls match no hookspec or take arguments their spec lacks (``check_plugins``).
    """
    pm = _PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    blocked = blocked_plugins()
    if blocked:
        known = _entry_point_names()
        bad = next((name for name in blocked if name not in known), None)
        if bad is not None:
            raise UserError(f"{BLOCK_ENV}: {unknown_line('plugin', bad, known)}")
        for name in blocked:
            pm.set_blocked(name)
    for name, module in BUILTIN_PLUGINS:
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name=name)
    if autoload is None:
        autoload = not _truthy(os.environ.get(DISABLE_AUTOLOAD_ENV))
    if autoload:
        _import_entry_points(pm)
        try:
            pm.load_setuptools_entrypoints(GROUP)
        except pluggy.PluginValidationError as exc:  # a hookimpl whose arguments its hookspec does not offer
            raise UserError(_validation_line(pm, exc)) from None
    check_plugins(pm)
    if _truthy(os.environ.get(TRACE_ENV)):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    return pm


def check_plugins(pm: pluggy.PluginManager) -> None:
    """pluggy's ``check_pending``: every hookimpl of every registered plugin matches a hookspec.

    Raises UserError naming the plugin's package and the misnamed hook (with a did-you-mean).
    """
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        specs = sorted(name for name in vars(hookspecs) if name.startswith("clbench_"))
        bad = sorted(name for name, caller in vars(pm.hook).items() if not name.startswith("_") and not caller.has_spec()
                     and any(impl.plugin is exc.plugin and not impl.optionalhook for impl in caller.get_hookimpls()))
        hook = bad[0] if bad else "?"
        raise UserError(f"plugin {describe_plugin(pm, exc.plugin)}: {unknown_line('hook', hook, specs)}; "
                        f"rename the hookimpl, or block the plugin with {BLOCK_ENV}={_plugin_name(pm, exc.plugin)}") from None


def _validation_line(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> str:
    """One line for pluggy's register-time check (a hookimpl's arguments, wrappers), naming the package and the hook."""
    message = str(exc)
    found = re.search(r"hook '([^']+)'", message)
    detail = message.strip().splitlines()[-1] if message.strip() else "invalid hookimpl"
    hook = found.group(1) if found else "?"
    return (f"plugin {describe_plugin(pm, exc.plugin)}: hook '{hook}': {detail}; fix the hookimpl (clbench/hookspecs.py "
            f"lists each hook's arguments), or block the plugin with {BLOCK_ENV}=<its entry-point name>")


def _module_of(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return getattr(obj, "__module__", None) or type(obj).__module__


def _plugin_name(pm: pluggy.PluginManager, plugin: Any) -> str:
    try:
        name = pm.get_name(plugin)
    except Exception:
        name = None
    return name if name and not name.isdigit() else "<its entry-point name>"


def _package_line(dist: str | None, module: str) -> str:
    return f"package {dist} (module {module})" if dist else f"module {module}"


def describe_plugin(pm: pluggy.PluginManager, plugin: Any) -> str:
    """A plugin as a user finds it: its distribution (pip package) and module, e.g. ``package clbench-sharp (module clbench_sharp)``."""
    module = _module_of(plugin)
    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            return _package_line(dist.project_name, module)
    for dist in md.distributions():  # a plugin whose registration failed is not in the list above
        if any(ep.group == GROUP and ep.module == module for ep in dist.entry_points):
            return _package_line(dist.metadata["Name"], module)
    dists = _packages_distributions().get(module.split(".")[0])
    return _package_line(dists[0] if dists else None, module)


@lru_cache(maxsize=1)
def _packages_distributions() -> dict:
    return md.packages_distributions()


#: kind -> (the hook that fills its registry, the module and name of the base every registered class subclasses,
#: the base's public name)
KINDS = {
    "method": ("clbench_add_methods", "clbench.method", "Method", "clbench.Method"),
    "dataset": ("clbench_add_datasets", "clbench.dataset_plugin", "DatasetPlugin", "clbench.DatasetPlugin"),
    "executor": ("clbench_add_executors", "clbench.executors", "Executor", "clbench.executors.Executor"),
    "logger": ("clbench_add_loggers", "clbench.loggers", "Logger", "clbench.loggers.Logger"),
}


class Plugins:
    """What core code knows of plugins: four registries (methods, datasets, executors, loggers) and the run events."""

    def __init__(self, pm: pluggy.PluginManager | None = None):
        self.pm = pm or make_plugin_manager()
        check_plugins(self.pm)  # also for a manager built elsewhere, with plugins registered after make_plugin_manager
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
        if top in ("clbench", "clbench_methods"):
            return "clbench"
        if top in self._dist_of_top_module:
            return self._dist_of_top_module[top]
        dists = _packages_distributions().get(top)
        if dists:
            return dists[0]
        return f"{top or '?'} (not installed)"

    # --- registries ---------------------------------------------------------
    def _registry(self, kind: str) -> Registry:
        """The registry of ``kind`` (a key of KINDS), filled by its hook; each plugin calls ``register(cls)``.

        Raises UserError, naming the object's package, for anything but one subclass of the kind's base
        with an identifier as its ``name``.
        """
        hook, module, base_name, public = KINDS[kind]
        base = getattr(importlib.import_module(module), base_name)
        reg: Registry = Registry(kind)

        def register(cls: Any, *extra: Any) -> None:
            where = f"{hook}: register({', '.join(repr(a) for a in (cls, *extra))})"
            if extra:
                raise UserError(f"{where}: register takes the {kind} class only, named by its 'name' attribute "
                                f"(Plugin API 1.0): register(My{kind.title()}), a subclass of {public}")
            if not isinstance(cls, type) or not issubclass(cls, base):
                what = f"class {cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else f"{type(cls).__name__} {cls!r}"
                raise UserError(f"plugin {self._describe(cls)}: {hook} registered {what}, which is not a subclass of "
                                f"{public}; a {kind} plugin is a class deriving from {public}")
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name.isidentifier():
                raise UserError(f"plugin {self._describe(cls)}: {kind} class {cls.__qualname__} needs a 'name' class "
                                f"attribute that is a Python identifier (got {name!r})")
            reg.register(name, cls, self.origin_of(cls))

        getattr(self.pm.hook, hook)(register=register)
        return reg

    def _describe(self, obj: Any) -> str:
        """The package and module that define ``obj`` (a registered object), for error lines."""
        origin = self.origin_of(obj)
        return _package_line(None if origin.endswith("(not installed)") else origin, _module_of(obj))

    @cached_property
    def methods(self) -> Registry[type[Method]]:
        """Every registered method class by name."""
        return self._registry("method")

    @cached_property
    def datasets(self) -> Registry[type[DatasetPlugin]]:
        """Every registered dataset class by name."""
        return self._registry("dataset")

    @cached_property
    def executors(self) -> Registry[type[Executor]]:
        """Every registered executor class by name."""
        return self._registry("executor")

    @cached_property
    def loggers(self) -> Registry[type[Logger]]:
        """Every registered logger class by name."""
        return self._registry("logger")

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

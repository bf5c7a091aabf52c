"""Every hook clbench calls, with its contract.

A plugin is any module or object with functions decorated by
``clbench.hookimpl`` whose names match the specs below. Plugins are found
through the ``clbench`` entry-point group, so a pip-installed package needs
only this in its pyproject.toml::

    [project.entry-points.clbench]
    my_method = "my_package.plugin"

The built-in methods, datasets, executors and loggers are registered the same
way. Every plugin kind has one shape: a class with a ``name`` attribute,
subclassing the kind's base, passed to ``register(cls)``. A hookimpl whose name
matches no spec below, or a registered object of the wrong kind, stops clbench
with one line naming the package (clbench/plugins.py).

This module imports no torch: the annotations name their types only for readers
and type checkers.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .dataset_plugin import DatasetPlugin
    from .executors import Executor
    from .learner import Learner
    from .loggers import Logger
    from .method import Method
    from .suite import Cell, Suite

hookspec = pluggy.HookspecMarker("clbench")


# --- registration: called once when the plugin manager is built ------------

@hookspec
def clbench_add_methods(register: Callable[[type[Method]], None]) -> None:
    """Register continual-learning methods.

    :param register: ``register(method_class)``; the class subclasses
        ``clbench.Method`` and names itself with its ``name`` attribute.
    """


@hookspec
def clbench_add_datasets(register: Callable[[type[DatasetPlugin]], None]) -> None:
    """Register datasets that streams can be built from.

    :param register: ``register(dataset_class)``; the class subclasses
        ``clbench.DatasetPlugin`` and names itself with its ``name`` attribute.
        Its ``Options`` (a pydantic model) are the stream keys it takes (e.g.
        ``root``, ``num_classes``); ``facts``, ``class_orders`` and
        ``offers_raw_names`` say what ``clbench validate`` can check without
        reading data; ``build(options)`` returns a ``clbench.data.Dataset``.
    """


@hookspec
def clbench_add_executors(register: Callable[[type[Executor]], None]) -> None:
    """Register executors, the engines that run a suite's cells.

    :param register: ``register(executor_class)``; the class subclasses
        ``clbench.executors.Executor`` and names itself with its ``name``
        attribute; its ``Options`` are the suite keys under ``executor:``.
    """


@hookspec
def clbench_add_loggers(register: Callable[[type[Logger]], None]) -> None:
    """Register run loggers that a suite can switch on with ``loggers: [name, ...]``.

    :param register: ``register(logger_class)``; the class subclasses
        ``clbench.loggers.Logger`` and names itself with its ``name``
        attribute. It is built as ``logger_class(results_dir, suite)`` at the
        start of a run and receives ``experience_end(report)`` (a
        ``clbench.events.ExperienceEnd``), ``cell_end(cell, record)`` and
        ``close()``.
    """


# --- events: for loggers and observers; return values are ignored ----------

@hookspec
def clbench_run_start(suite: Suite, results_dir: Path, cells: list[Cell]) -> None:
    """A ``clbench run`` is about to run ``cells`` (those not yet done).

    :param suite: the validated ``clbench.suite.Suite``.
    :param results_dir: ``pathlib.Path`` of the results folder.
    :param cells: list of ``clbench.suite.Cell`` that will run.
    """


@hookspec
def clbench_experience_end(cell: Cell, step: int, acc_row: list[Optional[float]], learner: Optional[Learner],
                           train_loss: Optional[float], test_sizes: list[int]) -> None:
    """A cell finished training on experience ``step`` (0-based) and was evaluated.

    Fired once per experience in the process that runs ``clbench run`` (the
    driver), wherever the cell itself runs. Take only the arguments you need.

    :param cell: the ``clbench.suite.Cell``.
    :param step: index of the experience just trained.
    :param acc_row: list of accuracies (fractions) on every experience's test set; None for an upcoming experience the method cannot score (e.g. icarl).
    :param learner: the ``clbench.learner.Learner`` (model, cost meters) when the
        cell runs in the driver's process; None when an executor runs it elsewhere
        (worker processes, Ray, Slurm).
    :param train_loss: the experience's last training loss (None if the method does not train).
    :param test_sizes: number of test images of every experience.
    """


@hookspec
def clbench_cell_end(cell: Cell, record: dict[str, Any]) -> None:
    """A cell ended (``record["status"]`` is ``done`` or ``failed``) and its record is on disk.

    :param cell: the ``clbench.suite.Cell``.
    :param record: the record dict exactly as written.
    """


@hookspec
def clbench_run_end(suite: Suite, results_dir: Path, summary: dict[str, int]) -> None:
    """A ``clbench run`` ended (also when some cells failed).

    :param suite: the validated ``clbench.suite.Suite``.
    :param results_dir: ``pathlib.Path`` of the results folder.
    :param summary: dict with counts ``done``, ``failed``, ``skipped``.
    """

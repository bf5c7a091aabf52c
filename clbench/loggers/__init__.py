"""Run loggers: per-step logs for dashboards, switched on per suite with ``loggers: [...]``.

Each logger is a subclass of ``Logger`` with a ``name``, registered as
``register(MyLogger)`` in a ``clbench_add_loggers`` hookimpl. The
dispatcher below is itself a plugin on the run's event hooks: at run start it
builds the loggers the suite names, forwards every experience and cell end to
them, and closes them at run end.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from clbench import hookimpl
from clbench.metrics import seen_accuracy


class Logger:
    """Base class of every run logger: built as ``cls(results_dir, suite)`` at run start; override what you need."""

    #: the name suites use (``loggers: [NAME]``); unique across installed plugins
    name: ClassVar[str] = ""

    def __init__(self, results_dir: Path, suite):
        self.results_dir = Path(results_dir)
        self.suite = suite

    def experience_end(self, report) -> None:
        """``report`` is a ``clbench.events.ExperienceEnd`` (cell, step, acc_row, train_loss, test_sizes)."""

    def cell_end(self, cell, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def step_accuracy(report) -> float:
    """Accuracy on the test data seen through the report's step (the metric behind avg_inc)."""
    return seen_accuracy(report.acc_row, report.test_sizes, report.step)


class Dispatcher:
    """Forwards run events to the loggers the running suite asked for (one per plugin manager)."""

    def __init__(self, plugins):
        self.plugins = plugins
        self.active: list[Logger] = []

    @hookimpl
    def clbench_run_start(self, suite, results_dir, cells):
        registry = self.plugins.loggers
        self.active = [registry.get(name)(results_dir, suite) for name in getattr(suite, "loggers", ())]

    @hookimpl
    def clbench_experience_end(self, cell, step, acc_row, learner, train_loss, test_sizes):
        from clbench.events import ExperienceEnd

        report = ExperienceEnd(cell, step, len(test_sizes), acc_row, train_loss, test_sizes, learner)
        for logger in self.active:
            logger.experience_end(report)

    @hookimpl
    def clbench_cell_end(self, cell, record):
        for logger in self.active:
            logger.cell_end(cell, record)

    @hookimpl
    def clbench_run_end(self, suite, results_dir, summary):
        for logger in self.active:
            logger.close()
        self.active = []


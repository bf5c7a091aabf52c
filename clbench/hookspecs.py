"""Every hook clbench calls, with its contract.

A plugin is any module or object with functions decorated by
``clbench.hookimpl`` whose names match the specs below. Plugins are found
through the ``clbench`` entry-point group, so a pip-installed package needs
only this in its pyproject.toml::

    [project.entry-points.clbench]
    my_method = "my_package.plugin"

The built-in methods, datasets and executors are registered the same way.
"""
import pluggy

hookspec = pluggy.HookspecMarker("clbench")


# --- registration: called once when the plugin manager is built ------------

@hookspec
def clbench_add_methods(register):
    """Register continual-learning methods.

    :param register: ``register(method_class)``; the class subclasses
        ``clbench.Method`` and names itself with its ``name`` attribute.
    """


@hookspec
def clbench_add_datasets(register):
    """Register datasets that streams can be built from.

    :param register: ``register(name, factory)``; ``factory(**options)``
        returns a ``clbench.data.Dataset``. ``options`` are the stream's
        dataset keys from the suite (e.g. ``root``, ``num_classes``).
    """


@hookspec
def clbench_add_executors(register):
    """Register executors, the engines that run a suite's cells.

    :param register: ``register(name, executor_class)``; the class follows
        ``clbench.executors.Executor``.
    """


@hookspec
def clbench_add_loggers(register):
    """Register run loggers that a suite can switch on with ``loggers: [name, ...]``.

    :param register: ``register(name, logger_class)``; the class is built as
        ``logger_class(results_dir, suite)`` at the start of a run and receives
        ``experience_end(cell, step, acc_row, learner)`` (a ``clbench.events.ExperienceEnd``), ``cell_end(cell, record)``
        and ``close()``; see ``clbench.loggers.Logger``.
    """


# --- events: for loggers and observers; return values are ignored ----------

@hookspec
def clbench_run_start(suite, results_dir, cells):
    """A ``clbench run`` is about to run ``cells`` (those not yet done).

    :param suite: the validated ``clbench.suite.Suite``.
    :param results_dir: ``pathlib.Path`` of the results folder.
    :param cells: list of ``clbench.suite.Cell`` that will run.
    """


@hookspec
def clbench_experience_end(cell, step, acc_row, learner, train_loss, test_sizes):
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
def clbench_cell_end(cell, record):
    """A cell ended (``record["status"]`` is ``done`` or ``failed``) and its record is on disk.

    :param cell: the ``clbench.suite.Cell``.
    :param record: the record dict exactly as written.
    """


@hookspec
def clbench_run_end(suite, results_dir, summary):
    """A ``clbench run`` ended (also when some cells failed).

    :param suite: the validated ``clbench.suite.Suite``.
    :param results_dir: ``pathlib.Path`` of the results folder.
    :param summary: dict with counts ``done``, ``failed``, ``skipped``.
    """

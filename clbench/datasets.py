"""Datasets a method names itself, beside its stream: checked at ``validate``, built through the dataset plugins.

Some methods learn from data outside the stream. ZSCL (methods/zscl.py) distils
on a *reference* dataset (the paper's ImageNet); a suite names it the way a
stream names its dataset, as a mapping with ``dataset`` and that dataset's
options::

    methods:
      - {name: zscl, reference: {dataset: imagenet1k}}

A method checks such a spec in ``Method.check`` with :func:`dataset_problem` (no
data read, no torch import, so ``clbench validate`` stays instant and refuses a
misspelled dataset or option with one line), and builds it at run time with
:func:`build_dataset`. Both go through the same code as a stream's dataset
(``clbench.suite.dataset_options`` and the registered ``DatasetPlugin``), so a
reference accepts exactly the keys the dataset accepts in a stream, and reads
its files from the same data root (the option ``root``, else ``$CLBENCH_DATA``,
else ``~/.cache/clbench/data``; docs/datasets.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .data.base import Dataset

__all__ = ["dataset_problem", "build_dataset"]


def _plugins(plugins):
    from .plugins import get_plugins

    return plugins or get_plugins()


def dataset_problem(name: str, options: dict[str, Any], plugins=None) -> Optional[str]:
    """Why the dataset ``name`` with ``options`` cannot be built, known without reading data; None when nothing is wrong.

    ``name``: a registered dataset plugin's name (``clbench list datasets``); ``options``: that
    dataset's options as a stream would give them beside ``dataset:`` (``{"num_classes": 70}``).
    ``plugins``: a ``clbench.plugins.Plugins`` (default: the process's).

    The answer is one line that starts with the key it is about and a colon: ``dataset: unknown
    dataset 'synthtic' (did you mean 'synthetic'?); known: ...`` for a name no plugin registered,
    ``nm_classes: unknown key (did you mean 'num_classes'?); known keys: ...`` for an option the
    dataset does not take, ``num_classes: Input should be less than or equal to 70 (got 99)`` for
    a value its ``Options`` model refuses. The wording is a stream's (clbench/suite.py), so a
    method's ``check`` can return ``{"reference." + key: rest}``. Imports no torch.
    """
    from .suite import OptionProblem, dataset_options

    try:
        dataset_options(_plugins(plugins), name, dict(options))
    except OptionProblem as problem:
        return f"{problem.key}: {problem.problem}"
    return None


def build_dataset(name: str, options: dict[str, Any], image_size: Optional[int] = None, plugins=None) -> "Dataset":
    """The ``clbench.data.Dataset`` (train and test image sets, class names, templates) of ``name`` with ``options``.

    Built as a stream's dataset is (clbench/runner.py): the options validated by the plugin's
    ``Options`` with its defaults filled in, runtime options (``root``, ``workers``, ...) passed on,
    and, for a dataset that decodes files at a chosen size (``input_size_option``, e.g. ImageNet's
    ``image_size``), ``image_size`` (pixels, the model's input side) unless ``options`` set it.
    The result is not a stream: no class order, no experiences; ``dataset.train`` holds every
    training image with labels 0..num_classes-1 (images as uint8 (N, 3, H, W) through
    ``train.load(index)``), ``dataset.class_names`` and ``dataset.templates`` name the classes.

    Raises ``clbench.errors.UserError`` for a name or options that cannot work (the line of
    :func:`dataset_problem`), and whatever the plugin raises when its data is missing (a
    ``UserError`` naming the folder it looked in, for the built-in datasets).
    """
    plugin, resolved = _resolve(name, options, plugins)
    size_key = plugin.input_size_option
    if image_size and size_key and resolved.get(size_key) is None:
        resolved[size_key] = image_size
    return plugin.build(resolved)


def _resolve(name: str, options: dict[str, Any], plugins) -> tuple[Any, dict]:
    from .errors import UserError
    from .suite import OptionProblem, dataset_options

    try:
        return dataset_options(_plugins(plugins), name, dict(options))
    except OptionProblem as problem:
        raise UserError(str(problem)) from None

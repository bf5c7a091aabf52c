"""The dataset plugin API: what a dataset is to the harness.

A dataset is a small class, like a method: it names itself, declares the
stream keys it takes as a pydantic ``Options`` model, says what it knows
without reading data (``facts``, ``class_orders``, ``offers_raw_names``) so
that ``clbench validate`` can check a suite before anything runs, and builds
its ``clbench.data.Dataset`` in ``build(options)``. Register the class itself::

    @hookimpl
    def clbench_add_datasets(register):
        register(MyDataset)

This module imports no torch: validating a suite stays instant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict

from .facts import DatasetFacts

if TYPE_CHECKING:  # pragma: no cover
    from .data.base import Dataset

#: dataset options that say where or how fast data is read, never what it is: not part of a cell's identity, so
#: moving a dataset or changing worker counts never re-runs finished cells nor splits a leaderboard's rows or columns.
#: They are runtime options for every dataset; a plugin adds its own in ``DatasetPlugin.runtime_options``.
RUNTIME_OPTIONS: tuple[str, ...] = ("root", "path", "download", "workers")


class NoOptions(BaseModel):
    """The ``Options`` of a dataset that takes no stream keys: any key is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetPlugin:
    """Base class of every dataset plugin; subclass it and register the class with ``clbench_add_datasets``.

    Class attributes:

    - ``name``: the name streams use (``dataset: NAME``); a Python identifier, unique across installed plugins.
    - ``Options``: a pydantic model of the stream keys the dataset takes (give it ``extra="forbid"``);
      the suite's keys are validated against it when the suite loads, and ``build``, ``facts`` and
      ``class_orders`` get them as a dict with every default filled in (``model_dump(mode="json")``).
    - ``runtime_options``: the options that only say where or how fast data is read (a cache folder);
      ``root``, ``path``, ``download`` and ``workers`` always are. They never change a cell's id.
    - ``input_size_option``: the option the runner fills with the model's input size (pixels) when the
      suite leaves it unset (None), e.g. ``"image_size"`` for datasets that decode files; None: never filled.
    - ``offers_raw_names``: True when the built ``Dataset`` carries ``raw_class_names``
      (``prompts: {class_names: raw}``).
    """

    #: the name suites use; must be unique across installed plugins
    name: ClassVar[str] = ""
    #: the stream keys this dataset takes (default: none)
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: options that only say where or how fast data is read (added to RUNTIME_OPTIONS)
    runtime_options: ClassVar[tuple[str, ...]] = RUNTIME_OPTIONS
    #: the option the runner sets to the model's input size when the suite leaves it None
    input_size_option: ClassVar[Optional[str]] = None
    #: whether the dataset offers the source's raw class names (``prompts.class_names: raw``)
    offers_raw_names: ClassVar[bool] = False

    @classmethod
    def facts(cls, options: dict[str, Any]) -> DatasetFacts:
        """The dataset's shape known from ``options`` alone (class count, templates, domains, images per class).

        Leave a field None when only the data can tell (a partial copy, class folders on another
        machine); ``validate`` skips the checks that need it and the cell checks it when it builds
        its stream. The default knows nothing.
        """
        return DatasetFacts()

    @classmethod
    def class_orders(cls, options: dict[str, Any]) -> tuple[str, ...]:
        """The names of the published class orders the dataset offers beside ``seeded`` for ``options``.

        Each must be a key of the built ``Dataset.named_orders``. The default offers none.
        """
        return ()

    @classmethod
    def build(cls, options: dict[str, Any]) -> "Dataset":
        """Read (or generate) the data: a ``clbench.data.Dataset`` for the stream's ``options``.

        ``options`` holds every key of ``Options`` (defaults filled in), runtime options included,
        and the model's input size under ``input_size_option`` when the suite left it unset.
        Raise ``clbench.errors.UserError`` with one line saying what is missing and how to get it.
        """
        raise NotImplementedError(f"dataset '{cls.name}' must implement build(options)")

    @classmethod
    def runtime_option_names(cls) -> frozenset[str]:
        """Every option of this dataset that only says where or how fast data is read (RUNTIME_OPTIONS included)."""
        return frozenset(RUNTIME_OPTIONS) | frozenset(cls.runtime_options)

"""Where datasets live on disk, and safe paths inside that place.

One data root serves every dataset: a stream's ``root:`` key, else the
``CLBENCH_DATA`` environment variable (``clbench run --data-root`` sets it),
else ``~/.cache/clbench/data``. Each dataset has its own folder below it
(docs/datasets.md shows every expected layout).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

DATA_ENV = "CLBENCH_DATA"


def data_root(root: str | None) -> Path:
    if root:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.home() / ".cache" / "clbench" / "data"


def dataset_dir(root: str | None, name: str, hint: str) -> Path:
    """The dataset's folder, or a UserError saying where it was looked for and how to get it."""
    folder = data_root(root) / name
    if not folder.is_dir():
        raise UserError(f"dataset '{name}' not found at {folder} (data root from stream 'root', ${DATA_ENV} or ~/.cache/clbench/data); {hint}")
    return folder


def inside(base: Path, relative: str, where: str) -> Path:
    """``base / relative``, refusing a path that names something outside ``base`` (absolute, or '..' past it).

    The check is on the path as written, not on where symlinks lead: a data tree
    assembled from symlinks into shared storage is fine, a split-file entry that
    climbs out of the tree is not.
    """
    if os.path.isabs(relative):
        raise UserError(f"{where}: path '{relative}' is absolute; paths must stay inside {base}")
    normal = os.path.normpath(relative)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise UserError(f"{where}: path '{relative}' escapes the dataset folder {base}")
    return base / normal

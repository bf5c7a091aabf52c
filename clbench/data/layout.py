"""Finding a dataset folder as its archive unpacks, and reading the small text files that index it.

Shared by the continual-learning benchmarks that ship as folders (``tinyimagenet``,
``imagenet_r``, ``cub200``, ``core50``). Each reads its own folder below the data
root (``<root>/tiny-imagenet-200``, ...), or the folder a stream's ``path`` names.
Every problem is one ``UserError`` line naming the file (and line) and what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserError
from .root import DATA_ENV, data_root


def locate(name: str, folder: str, root: Optional[str], path: Optional[str], hint: str) -> Path:
    """The folder of dataset ``name``: ``path`` when given (absolute, or relative to ``root`` when that is given,
    else to the working folder), else ``<data root>/<folder>``.

    Raises UserError ``dataset '<name>' not found at <folder> (...); <hint>`` when it is not a directory.
    """
    if path:
        where = Path(path).expanduser()
        if root and not where.is_absolute():
            where = Path(root).expanduser() / where
        source = "stream 'path'"
    else:
        where = data_root(root) / folder
        source = f"data root from stream 'root', ${DATA_ENV} or ~/.cache/clbench/data"
    if not where.is_dir():
        raise UserError(f"dataset '{name}' not found at {where} ({source}); {hint}")
    return where


def read_lines(path: Path, hint: str) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` for each non-empty line of a text file; UserError ``<path>: missing; <hint>``."""
    if not path.is_file():
        raise UserError(f"{path}: missing; {hint}")
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def id_table(path: Path, hint: str, value=str) -> dict[int, object]:
    """A ``<integer id> <value>`` file (CUB-200's images.txt, classes.txt, ...) as {id: value(rest of the line)}.

    UserError with ``<path>:<line>`` for a line that is not an integer id followed by a value, for a
    value ``value`` refuses (ValueError), or for an id listed twice.
    """
    table: dict[int, object] = {}
    for number, line in read_lines(path, hint):
        head, _, rest = line.partition(" ")
        try:
            key, item = int(head), value(rest.strip())
        except ValueError:
            raise UserError(f"{path}:{number}: malformed line '{line}'; expected '<id> <value>'") from None
        if not rest.strip():
            raise UserError(f"{path}:{number}: malformed line '{line}'; expected '<id> <value>'")
        if key in table:
            raise UserError(f"{path}:{number}: id {key} listed twice")
        table[key] = item
    return table

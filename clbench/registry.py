"""A named registry of plugin objects that remembers where each came from.

Methods, datasets, executors and loggers each live in one of these. Lookups of a
misspelled name answer with "did you mean ...", and every entry keeps the
distribution that registered it so ``clbench list`` can show origins.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_line(what: str, name: object, known) -> str:
    """The one line for a name that is not among ``known``: ``unknown WHAT 'NAME' (did you mean 'X'?); known: A, B``.

    ``known`` is listed in the order given ("none" when empty); the did-you-mean part
    appears only when a known name is close. Callers prefix the file and key.
    """
    known = [str(k) for k in known]
    return f"unknown {what} '{name}'{did_you_mean(str(name), known)}; known: {', '.join(known) or 'none'}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered plugin: its name, the object (a class) and the distribution that registered it."""

    name: str
    obj: T
    origin: str  # the distribution (pip package) that registered it


class Registry(Generic[T]):
    """The plugins of one kind by name; ``get`` of an unknown name raises a UserError with a did-you-mean."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T, origin: str) -> None:
        """Add ``obj`` as ``name``; ValueError for a name that is not an identifier, UserError when taken by another object."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} name {name!r} must be a Python identifier")
        if name in self._entries and self._entries[name].obj is not obj:
            other = self._entries[name].origin
            raise UserError(
                f"{self.kind} '{name}' is registered twice (by {other} and by {origin}); "
                f"uninstall one of the two packages or rename the {self.kind}"
            )
        self._entries[name] = Entry(name, obj, origin)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(unknown_line(self.kind, name, sorted(self._entries))) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

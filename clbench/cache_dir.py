"""Where work shared between cells and runs lives on this machine: decoded images and content-addressed results.

``CLBENCH_CACHE_DIR`` names the folder (``clbench run --cache-dir`` sets it for
the run and every process it starts); ``off`` turns every cache off. Without
it the folder is ``$XDG_CACHE_HOME/clbench``, else ``~/.cache/clbench``.
Every entry is keyed by the content it was computed from, written atomically
and checked when read, so a cache folder can be deleted at any time and never
changes a record.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "CLBENCH_CACHE_DIR"
OFF = "off"


def cache_root() -> Path | None:
    """The cache folder (not created here), or None when ``CLBENCH_CACHE_DIR=off``."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() == OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "clbench"


def cache_folder(kind: str) -> Path | None:
    """``cache_root() / kind``, or None when caching is off."""
    root = cache_root()
    return None if root is None else root / kind

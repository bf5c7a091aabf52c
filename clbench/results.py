"""The results folder: one JSON record per cell, written atomically.

A record is written to a temporary file in the same folder, flushed to disk,
then renamed over its final name, so a reader sees either the old record or
the new one, never half of one. A cell whose record says ``done`` is never
run again; ``failed`` cells are kept with their error and run again on request.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

#: bumped whenever a change makes a record of the same suite entry mean something else (a metric's definition,
#: a method's maths, a class order, the replay memory): it is part of every cell's config, so a results folder
#: re-runs such cells instead of resuming them, and tables leave the older records out (aggregate.dedupe).
#: 2: Mammoth's forgetting, per-anchor GCL, Sagawa's Group-DRO, dro_replay on er's objective, PyCIL's iCaRL
#: distillation and NME, unbiased replay memories drawn without replacement, QuickGELU for OpenAI tags,
#: seeded class orders for seed 1993.
RESULTS_VERSION = 2

RECORDS = "records"
CORRUPT = "corrupt"


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends, so a rename in progress always completes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda s, f: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught:
            signal.raise_signal(sig)


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """``write(file)`` into a flushed, fsynced temp file beside ``path``, then a rename: readers see the old file or
    the new one, never half. The folder is created; on any failure the temp file is removed and the error raised.
    The file gets the permissions ``open`` would give it (0666 less the umask), not the temp file's owner-only 0600,
    so a group sharing a results folder, or a web server showing a report, can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        with signals_deferred():
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` written by ``atomic_write``."""
    atomic_write(path, lambda f: f.write(text))


class ResultStore:
    def __init__(self, root):
        self.root = Path(root)
        self.records_dir = self.root / RECORDS

    def path(self, cell_id: str) -> Path:
        return self.records_dir / f"{cell_id}.json"

    def write(self, record: dict) -> Path:
        path = self.path(record["cell_id"])
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
        return path

    def read(self, cell_id: str) -> dict | None:
        """The record, or None; a truncated or corrupt record is moved to records/corrupt/ so the cell runs again."""
        path = self.path(cell_id)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("cell_id") != cell_id or "status" not in record:
                raise ValueError("not a record of this cell")
            return record
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            self.move_aside(path)
            return None

    def move_aside(self, path: Path) -> None:
        folder = self.records_dir / CORRUPT
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, folder / f"{path.name}.{int(time.time() * 1000)}")
        except FileNotFoundError:
            pass

    def status(self, cell_id: str) -> str | None:
        record = self.read(cell_id)
        return None if record is None else record.get("status")

    def is_done(self, cell_id: str) -> bool:
        return self.status(cell_id) == "done"

    def records(self) -> Iterator[dict]:
        """Every readable record, in file-name order."""
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                yield json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue

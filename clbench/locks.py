"""Per-cell locks in the results folder, so several `clbench run` never run the same cell twice.

An advisory ``flock`` on ``DIR/locks/<cell_id>.lock``: the operating system
drops it when its process ends, however it ends (SIGKILL included), so a
crashed run never leaves a cell locked. Works across processes on one
machine and on shared file systems that honour flock (NFSv4, Lustre, GPFS).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


@contextlib.contextmanager
def waiting_lock(path: Path):
    """Hold an exclusive ``flock`` on the file ``path`` (created), waiting for another holder first: for a
    cache entry that one process computes while the others wait. OSError when the file cannot be opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the OS drops it if its holder dies, so nobody waits forever
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def cell_lock(folder: Path, cell_id: str):
    """Yields True while this process holds the cell's lock, False if another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{cell_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

"""Progress events through the shared results folder, for engines with no channel back (Slurm jobs).

Each cell's job appends JSON lines to ``RESULTS/events/<run>/<cell_id>.jsonl``
(one write per line, O_APPEND, so a reader never sees half a line once it
reads up to the last newline); the driver tails the folder and removes it at
the end of the run.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


class EventWriter:
    """Picklable: travels inside the job and appends that cell's events."""

    def __init__(self, folder: Path | str, cell_id: str):
        self.path = Path(folder) / f"{cell_id}.jsonl"

    def __call__(self, message: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(message) + "\n").encode())
        finally:
            os.close(fd)


class EventReader:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.offsets: dict[Path, int] = {}

    def read(self) -> list[dict]:
        """Complete lines written since the last call, file by file."""
        messages = []
        if not self.folder.is_dir():
            return messages
        for path in sorted(self.folder.glob("*.jsonl")):
            start = self.offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                try:
                    messages.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
            self.offsets[path] = start + end
        return messages

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()  # the events folder itself, once no run uses it
        except OSError:
            pass

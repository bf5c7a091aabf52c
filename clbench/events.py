"""What a running cell reports while it runs, in a form that can cross a process boundary.

A cell may run in this process, in a worker process, in a Ray task or in a
Slurm job. Wherever it runs it reports the same events; executors carry them
home as JSON-able dicts and the driver turns them into hook calls and progress.
Only the in-process report carries the live ``learner``; elsewhere it is None.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ExperienceEnd:
    cell: Any  # clbench.suite.Cell
    step: int
    steps: int
    acc_row: list[float | None]  # None: an upcoming experience the method cannot score
    train_loss: float | None
    test_sizes: list[int]
    learner: Any = field(default=None, repr=False)

    def message(self) -> dict:
        return {"event": "experience", "cell_id": self.cell.cell_id, "step": self.step, "steps": self.steps,
                "acc_row": list(self.acc_row), "train_loss": self.train_loss, "test_sizes": list(self.test_sizes)}

    @classmethod
    def from_message(cls, cell, message: dict) -> "ExperienceEnd":
        return cls(cell, message["step"], message["steps"], message["acc_row"], message["train_loss"], message["test_sizes"])


def here() -> str:
    """Where this process runs, as progress lines show it."""
    return f"{socket.gethostname()} pid {os.getpid()}"


def started(cell_id: str) -> dict:
    return {"event": "started", "cell_id": cell_id, "where": here(), "pid": os.getpid()}

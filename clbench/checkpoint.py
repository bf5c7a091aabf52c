"""Checkpoints inside a cell, so an interrupted cell resumes at its last finished experience.

After each experience the runner writes everything the rest of the cell
depends on: model weights, the method's state (buffer, DRO weights,
prototypes, …), the Learner's data-order generator and cost counters, the
global RNG states, and the accuracy-matrix rows so far. The optimizer, its
schedule and the AMP scaler are rebuilt at the start of every experience by
the Learner, so an experience boundary holds none of their state. Files are
written atomically and read with ``torch.load(weights_only=True)``; a file
torch cannot read (truncated, from another format, holding types that loader
refuses) is moved aside with a warning on stderr and the cell starts over. A
method's state is checked before it is saved (clbench/state_check.py), so this
code never writes a checkpoint it cannot read back.
"""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import lazy_loader as lazy
import numpy as np

from .errors import brief
from .results import atomic_write

torch = lazy.load("torch")  # imported on first use: a run with nothing left to do never loads it

FORMAT = 2  # 2: dataset ids in image sets, the replay memory's block table, per-anchor GCL and DRO state


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CellCheckpoint:
    def __init__(self, folder: Path, cell_id: str):
        self.path = Path(folder) / f"{cell_id}.pt"
        self.cell_id = cell_id

    def save(self, state: dict) -> None:
        state = {"format": FORMAT, "cell_id": self.cell_id, **state}
        atomic_write(self.path, lambda f: torch.save(state, f), binary=True)

    def load(self, set_aside: bool = True) -> dict | None:
        """The saved state, or None when there is none or it cannot be read.

        A file torch cannot read, or that is not a checkpoint of this cell in this format, is moved
        aside and one warning line on stderr says why (``set_aside``: the group's rank 0 alone moves
        it and warns, the other ranks of a cell only read).
        """
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("cell_id") != self.cell_id:
                raise ValueError(f"not a checkpoint of this cell in format {FORMAT}")
            return state
        except Exception as exc:
            if set_aside:
                aside = self.set_aside()
                print(f"warning: cell {self.cell_id}: cannot read its checkpoint ({_why(exc)}); moved it to {aside.name}, "
                      "the cell starts over", file=sys.stderr, flush=True)
            return None

    def set_aside(self) -> Path:
        """Rename the checkpoint to ``*.corrupt-<time>`` (kept for inspection); the cell then starts over."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        os.replace(self.path, aside)
        return aside

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _why(exc: BaseException) -> str:
    """Why ``torch.load`` failed, in a few words (its weights-only message is a page long)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split(" was not an allowed global")[0]
        first = next((line.strip() for line in detail.splitlines() if line.strip()), "")
        return f"torch.load(weights_only=True) refused it: {first[:200]}"
    return brief(exc)

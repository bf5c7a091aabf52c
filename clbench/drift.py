"""Representation drift: how far the image features of old experiences' test images moved.

After step t, for every experience j ≤ t, the mean over j's test images x of
the cosine similarity between x's image feature now and

- ``since_learned``: x's feature right after step j (the model that had just learned j);
- ``since_initial``: x's feature under the model as built (before step 0).

Both are matrices shaped like the accuracy matrix (row t, column j), with
``None`` above the diagonal; ``since_learned[t][t]`` is 1 by definition. The
summary metric ``drift`` (metrics.py) is the mean over j < T of
1 − since_learned[T][j], the feature counterpart of ``forgetting``.

The features are the shared image tower's (``Learner.image_features``: the
model with the harness's LoRA adapters, L2-normalised, without a method's own
prompts or adapters), the ones the evaluation of a method that scores from
features (and CLIP's zero-shot rule) already computes; for other methods they
cost one extra pass over the seen test sets after every step in which the
image tower changed. The reference features are kept on the device, one copy
per test set for each of the two references.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import lazy_loader as lazy

torch = lazy.load("torch")

FeaturesOf = Callable[[int], "torch.Tensor"]  # experience index -> (N_j, D) features of its test images


def mean_cosine(a: "torch.Tensor", b: "torch.Tensor") -> float:
    """Mean over rows of the cosine similarity of row i of ``a`` and row i of ``b`` (both (N, D)).

    Rows are L2-normalised here (in float32), so inputs need not be. Raises
    ValueError when the shapes differ or N is 0.
    """
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise ValueError(f"mean_cosine needs two (N, D) tensors of one shape with N > 0, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = torch.nn.functional.normalize(a.float(), dim=1)
    b = torch.nn.functional.normalize(b.to(a.device).float(), dim=1)
    return float((a * b).sum(dim=1).mean())


class DriftTracker:
    """The two drift matrices of one cell, row by row (``experiences`` = T steps)."""

    def __init__(self, experiences: int):
        self.T = experiences
        self.initial: list[Optional["torch.Tensor"]] = [None] * experiences
        self.learned: list[Optional["torch.Tensor"]] = [None] * experiences
        self.since_learned: list[list[Optional[float]]] = []
        self.since_initial: list[list[Optional[float]]] = []
        self.seconds = 0.0  # wall seconds spent here (extra feature passes included)
        self.complete = True  # False after resuming from a checkpoint that kept no references

    def start(self, features_of: FeaturesOf) -> None:
        """Keep every test set's features under the model as built (call before step 0)."""
        began = time.perf_counter()
        self.initial = [features_of(j) for j in range(self.T)]
        self.seconds += time.perf_counter() - began

    def step(self, t: int, features_of: FeaturesOf) -> None:
        """Append row ``t`` of both matrices, right after step t's evaluation; keeps experience t's features."""
        if not self.complete:
            return
        began = time.perf_counter()
        now = [features_of(j) for j in range(t + 1)]
        self.learned[t] = now[t]
        pad = [None] * (self.T - t - 1)
        self.since_learned.append([mean_cosine(now[j], self.learned[j]) for j in range(t)] + [1.0] + pad)
        self.since_initial.append([mean_cosine(now[j], self.initial[j]) for j in range(t + 1)] + pad)
        self.seconds += time.perf_counter() - began

    def record(self) -> Optional[dict]:
        """The record's ``drift`` entry, or None when a resume lost the references."""
        if not self.complete or not self.since_learned:
            return None
        return {"since_learned": self.since_learned, "since_initial": self.since_initial,
                "features": "shared image tower (Learner.image_features), test images, mean cosine similarity"}

    def state_dict(self, keep_features: bool = True) -> dict:
        """What resume needs: the rows so far and the reference features (CPU tensors).

        ``keep_features=False`` (the image tower is still as built, so every reference equals the current
        features) leaves the features out, and :meth:`load_state_dict` computes them again: a checkpoint of
        a frozen-tower cell stays small. Otherwise the checkpoint holds two copies of the test sets' features.
        """
        keep = lambda ts: [None if x is None else x.detach().cpu() for x in ts]  # noqa: E731
        return {"initial": keep(self.initial) if keep_features else None, "learned": keep(self.learned) if keep_features else None,
                "since_learned": self.since_learned, "since_initial": self.since_initial, "seconds": self.seconds,
                "complete": self.complete}

    def load_state_dict(self, state: Optional[dict], device, features_of: Optional[FeaturesOf] = None) -> None:
        """Restore :meth:`state_dict`'s output; ``None`` (a checkpoint from before drift was kept) makes
        this cell's drift unavailable (its record's ``drift`` is null) rather than wrong. A state saved
        without features takes them from ``features_of`` (the restored model, whose image tower is as built)."""
        if state is None:
            self.complete = False
            return
        self.since_learned = [list(r) for r in state["since_learned"]]
        self.since_initial = [list(r) for r in state["since_initial"]]
        self.seconds, self.complete = state["seconds"], state["complete"]
        if state["initial"] is None:
            if features_of is None:
                raise ValueError("this drift state holds no features: pass features_of to compute them again")
            self.initial = [features_of(j) for j in range(self.T)]
            self.learned = [self.initial[j] if j < len(self.since_learned) else None for j in range(self.T)]
            return
        move = lambda ts: [None if x is None else x.to(device) for x in ts]  # noqa: E731
        self.initial, self.learned = move(state["initial"]), move(state["learned"])

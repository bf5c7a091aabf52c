"""What a method's ``loss`` receives: one training batch, described once.

The Learner builds a ``Batch`` for every optimisation step of ``Learner.fit``:
the new images of the experience first, then the exemplars replayed from the
memory (if any), so a loss can treat the two parts differently (e.g. ER-ACE's
asymmetric cross-entropy, DER++'s logit replay).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .data.scenarios import Experience


@dataclass(frozen=True)
class Batch:
    """One training step's batch.

    ``images``: (B, 3, S, S) float, preprocessed (resized to the model's input size S and
    CLIP-normalised) on the Learner's device. ``labels``: (B,) int64 global class ids, on the
    device. ``classes``: the distinct classes of the batch, sorted, a host list (no device sync
    to read it). ``exp``: the experience being learned. ``n_replayed``: how many of the B rows
    came from the replay memory; they are the last ``n_replayed`` rows (``replayed`` is the
    same as a (B,) bool mask on the device). ``ids``: (B,) int64 host tensor of each image's
    position in the dataset's training split, or None when the image set carries no ids.
    """

    images: "torch.Tensor"
    labels: "torch.Tensor"
    classes: list[int]
    exp: "Experience"
    n_replayed: int = 0
    ids: Optional["torch.Tensor"] = None

    @property
    def n_new(self) -> int:
        """Rows from the experience's own training data (the first ``n_new`` rows)."""
        return len(self.labels) - self.n_replayed

    @property
    def replayed(self) -> "torch.Tensor":
        """(B,) bool on the device: True for the rows that came from the replay memory."""
        import torch

        mask = torch.zeros(len(self.labels), dtype=torch.bool, device=self.labels.device)
        if self.n_replayed:
            mask[self.n_new:] = True
        return mask

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
    from .distributed import StepRows


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

    With ``train.devices: N > 1`` (docs/distributed.md) the cell runs as N ranks, each holding a block of the
    global batch's rows: ``images`` are this rank's rows only, while ``labels``, ``classes``, ``ids`` and
    ``n_replayed`` describe the whole global batch, and ``Learner.encode_images(batch.images)`` (and a frozen
    snapshot's) returns the whole batch's features (B, D). A loss written for one process thus computes the same
    value on every rank, with every per-batch statistic over the global batch. ``gather`` and ``local`` convert
    any other per-row tensor.
    """

    images: "torch.Tensor"
    labels: "torch.Tensor"
    classes: list[int]
    exp: "Experience"
    n_replayed: int = 0
    ids: Optional["torch.Tensor"] = None
    rows: Optional["StepRows"] = None  # train.devices > 1: which rows of the global batch each rank holds

    def gather(self, tensor: "torch.Tensor") -> "torch.Tensor":
        """The whole batch's rows (B, ...) of a per-row tensor of this rank's rows (len(images), ...), with gradients.

        A collective with ``train.devices > 1`` (every rank must call it at the same point); the tensor itself in
        one process. ``Learner.encode_images(batch.images)`` already returns the whole batch's features.
        """
        from .distributed import gather_rows

        return gather_rows(tensor, self.rows)

    def local(self, tensor: "torch.Tensor") -> "torch.Tensor":
        """This rank's rows of a whole-batch tensor (B, ...), e.g. images mixed across the batch (CutMix), marked so that
        ``Learner.encode_images`` of the result again returns the whole batch's features; the tensor itself in one process.
        """
        if self.rows is None:
            return tensor
        from .sync_check import to_device

        part = tensor[to_device(self.rows.local_index, tensor.device)]
        self.rows.local.append(part)
        return part

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

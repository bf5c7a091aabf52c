"""One cell on several processes: the ranks of a ``torch.distributed`` group (``train.devices: N``).

Data-parallel training as clbench does it (docs/distributed.md):

- every rank builds the same stream, model and method, and draws the same global batch
  (same generator); it loads, preprocesses and encodes only its own rows of that batch
  (``shard_bounds``: contiguous, the first ``B mod N`` ranks one row more);
- the image features of those rows are all-gathered (``gather_rows``), so every rank computes
  the method's loss on the *whole* global batch, exactly as one process would: per-class
  losses, normalisers, batch classes and any other per-batch statistic are global by
  construction;
- ``gather_rows``' backward hands each rank the gradient of its own rows times N, and
  DistributedDataParallel averages the ranks' gradients, so every parameter gets the gradient
  of the global batch's loss (the rows' part from the rank that encoded them, the replicated
  part, e.g. the text tower's, from every rank alike);
- whole-set passes (``Learner.features``, accuracies) are split across ranks and
  all-gathered or all-reduced.

With one process (no group) every function here is the identity or a no-op.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import lazy_loader as lazy

torch = lazy.load("torch")


def world() -> tuple[int, int]:
    """(rank, number of ranks) of this process's group; (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes checkpoints, records and events."""
    return world()[0] == 0


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """The [start, end) of ``rank``'s rows among ``n``: contiguous blocks, the first ``n mod size`` ranks one row more.

    >>> [shard_bounds(5, r, 2) for r in range(2)]
    [(0, 3), (3, 5)]
    """
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def local_device(kind: str):
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA (torchrun sets LOCAL_RANK), else ``kind`` as is."""
    if kind == "cuda" and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(kind)


@dataclass
class StepRows:
    """Which rows of one global batch of ``total`` rows each rank holds.

    ``positions[r]``: int64 host tensor, the global rows rank r encodes, in its local order. A rank
    with no row of a batch (a last batch smaller than the group) encodes one padding row
    (``padded``) whose features and gradients are dropped. ``local`` holds the tensors that are
    this rank's rows of the batch (its images, and what ``Batch.local`` returned), so
    ``encode_images`` knows to gather their features.
    """

    positions: list
    total: int
    rank: int
    local: list = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.positions)

    @property
    def mine(self):
        return self.positions[self.rank]

    @property
    def padded(self) -> bool:
        return len(self.mine) == 0

    @property
    def local_index(self):
        """The global rows this rank encodes: its own, or row 0 as its padding row."""
        return self.mine if not self.padded else torch.zeros(1, dtype=torch.long)

    def holds(self, tensor) -> bool:
        """True when ``tensor`` is one of this rank's row tensors of the batch (identity, not equality)."""
        return any(tensor is t for t in self.local)

    def scatter_index(self):
        """(B,) int64 host tensor: for each gathered row (ranks in order, real rows only), its global row."""
        return torch.cat(self.positions) if self.positions else torch.empty(0, dtype=torch.long)


def _all_gather_padded(local, counts: list[int]):
    """Every rank's ``local`` (counts[r] real rows, padded here to the longest) joined in rank order: (sum(counts), ...)."""
    width = max(max(counts), 1)
    rows = local.shape[0]
    if rows < width:
        local = torch.cat([local, local.new_zeros((width - rows,) + tuple(local.shape[1:]))])
    parts = [torch.empty_like(local) for _ in counts]
    torch.distributed.all_gather(parts, local.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


@functools.cache
def _gather_function():
    """The autograd Function, built on first use (this module must not import torch when imported)."""

    class _GatherRows(torch.autograd.Function):
        """All-gather of per-row tensors with the gradient of each rank's own rows, scaled by the group size."""

        @staticmethod
        def forward(ctx, local, rows: StepRows):
            ctx.rows, ctx.local_rows = rows, local.shape[0]
            counts = [len(p) for p in rows.positions]
            joined = _all_gather_padded(local.detach(), counts)
            out = local.new_empty((rows.total,) + tuple(local.shape[1:]))
            out[_on(rows.scatter_index(), local.device)] = joined
            return out

        @staticmethod
        def backward(ctx, grad):
            rows = ctx.rows
            # every rank computed the same loss on the same gathered rows, so grad is the same on every rank: this rank's
            # rows take their part, times N because DistributedDataParallel averages the ranks' gradients
            mine = grad[_on(rows.mine, grad.device)] * rows.size
            if ctx.local_rows > len(rows.mine):  # the padding row gets no gradient
                mine = torch.cat([mine, grad.new_zeros((ctx.local_rows - len(rows.mine),) + tuple(grad.shape[1:]))])
            return mine, None

    return _GatherRows


def _on(index, device):
    from .sync_check import to_device

    return to_device(index, device)


def gather_rows(local, rows: StepRows | None):
    """The whole global batch's rows (B, ...) from this rank's (b, ...), with gradients; ``rows=None``: ``local`` itself.

    Every rank must call it at the same point (it is a collective). Source: the gather-then-
    compute-everywhere pattern of open_clip's distributed contrastive loss (``gather_features``),
    with the backward scaled so that DDP's averaging yields the global batch's gradient.
    """
    if rows is None:
        return local
    if torch.is_grad_enabled() and local.requires_grad:
        return _gather_function().apply(local, rows)
    with torch.no_grad():
        return _gather_function().forward(_NoContext(), local, rows)


class _NoContext:
    """A stand-in for autograd's ctx when gathering without gradients."""


def gather_set(local, n: int):
    """Every rank's block of a set of ``n`` rows (``shard_bounds``) joined: (n, ...), the same on every rank.

    ``local`` holds this rank's rows (or one padding row when it has none).
    """
    rank, size = world()
    counts = [end - start for start, end in (shard_bounds(n, r, size) for r in range(size))]
    return _all_gather_padded(local[:counts[rank]], counts)


def all_reduce_sum(value):
    """The sum of a tensor over the ranks (in place; the tensor itself without a group)."""
    if world()[1] > 1:
        torch.distributed.all_reduce(value)
    return value


def sum_over_ranks(tensor):
    """The sum of ``tensor`` over the ranks of a cell with ``train.devices > 1``, in place; the tensor itself otherwise.

    For statistics a method gathers while it scores test images (``predict``): each rank scores only its block of
    each test set. It is a collective: call it where every rank runs the same code, e.g. in ``state_dict`` (called on
    every rank before each checkpoint) or ``record_extras``, never per batch of ``predict`` (the ranks' blocks may
    have different numbers of batches).
    """
    return all_reduce_sum(tensor)


def all_reduce_max(value: float) -> float:
    """The largest of a number over the ranks (e.g. peak memory); the number itself without a group."""
    if world()[1] == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


def _collective_device():
    return torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def init_from_env(device_kind: str, timeout_s: float = 1800) -> None:
    """Join the group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): NCCL for
    CUDA, gloo for CPU. Each CUDA rank takes GPU ``LOCAL_RANK``."""
    from datetime import timedelta

    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend, timeout=timedelta(seconds=timeout_s))

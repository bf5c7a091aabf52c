"""Replay memory: which past training images a method may see again, and what they cost to keep.

The capacity is given as ``size`` (exemplars), ``per_class`` (grows with the
classes seen) or ``fraction`` of the stream's training set. Exemplars are
kept as a subset of the training data itself (uint8 pixels in memory, or
file references whose encoded bytes are counted), never as float tensors.
Selection is deterministic under the cell's seed and redone after every
experience (``ReplayBuffer.update``).

Policies:
- ``class_balanced`` (default): every seen class gets an equal share
  (``split_quota``); within a class, every image of that class offered so
  far is in the memory with the same probability quota_c / N_c;
- ``reservoir``: one share for the whole stream; every image offered so far
  is in the memory with the same probability K / N (K the capacity, N the
  images offered so far) -- the inclusion property of reservoir sampling
  (Vitter 1985, "Random sampling with a reservoir", Algorithm R), kept here
  also when K grows (``per_class``);
- ``herding``: per class, iCaRL's herding order on image features (the
  prefix of the order is kept when a class's share shrinks); deterministic.

How the two random policies select is in clbench/sampling.py: every image
offered so far is in the memory with the same probability (K / N for
``reservoir``, quota_c / N_c within class c for ``class_balanced``) and each
experience keeps about its proportional share of each pool (within one
exemplar in the common cases; see there). For ``class_balanced`` the pools are
the classes, so an experience's (domain's) total over all classes is kept close
to its share by spreading the classes' random starts, not within one exemplar
in general.

``sample(n)`` draws a replay batch (images, labels, dataset ids) without
replacement, as Mammoth's ``utils/buffer.py`` (``Buffer.get_data`` with
``np.random.choice(..., replace=False)``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal, Optional

import lazy_loader as lazy
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .sampling import BLOCK_KEYS, no_blocks, select

if TYPE_CHECKING:  # pragma: no cover
    from .data.base import ImageSet

torch = lazy.load("torch")  # imported on first use: a suite's methods are validated without torch

Policy = Literal["class_balanced", "reservoir", "herding"]



class BufferSpec(BaseModel):
    """How large the memory is and how it is filled; give exactly one of size, per_class, fraction."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    size: Optional[int] = Field(None, ge=0)
    per_class: Optional[int] = Field(None, ge=0)
    fraction: Optional[float] = Field(None, ge=0, le=1)
    policy: Policy = "class_balanced"

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("size", "per_class", "fraction") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of size, per_class, fraction (got {', '.join(given) or 'none'})")
        return self


def split_quota(capacity: int, classes: list[int]) -> dict[int, int]:
    """An equal share per class; the remainder goes one each to the first classes in ``classes`` order."""
    if not classes:
        return {}
    q, r = divmod(capacity, len(classes))
    return {c: q + (1 if i < r else 0) for i, c in enumerate(classes)}


def herding_order(features: torch.Tensor, k: int) -> list[int]:
    """iCaRL's herding: greedily pick samples whose running mean stays closest to the class mean."""
    features = torch.nn.functional.normalize(features.float(), dim=1)
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for step in range(1, min(k, len(features)) + 1):
        candidate_means = (running + features) / step
        dist = (mu - candidate_means).norm(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += features[i]
    return chosen


class ReplayBuffer:
    """The replay memory of one cell: ``update`` after each experience, ``sample`` at every step.

    Attributes: ``data`` (the exemplars, an ImageSet, or None when empty),
    ``origin`` (int64 (len,), the index of the experience each exemplar came from,
    0 for the first ``update``), ``blocks`` (per pool and origin experience: ``offered``
    images, ``expected`` exemplars held, ``low``/``high`` bounds on exemplars held).
    """

    def __init__(self, spec: BufferSpec, stream_train_size: int, seed: int):
        self.spec = spec
        self.generator = torch.Generator().manual_seed(seed + 7919)  # independent of the training order
        self.stream_train_size = stream_train_size
        self.data: ImageSet | None = None
        self.origin = torch.zeros(0, dtype=torch.long)
        self.experiences = 0  # updates so far; the origin the next experience's images get
        self.blocks = no_blocks()

    def capacity(self, n_classes: int) -> int:
        s = self.spec
        if s.size is not None:
            return s.size
        if s.per_class is not None:
            return s.per_class * n_classes
        return int(round(s.fraction * self.stream_train_size))

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def summary(self) -> dict:
        return {"exemplars": len(self), "bytes": 0 if self.data is None else self.data.stored_bytes(),
                "policy": self.spec.policy, "capacity_rule": self.spec.model_dump(exclude_none=True)}

    def class_counts(self) -> dict[int, int]:
        if self.data is None:
            return {}
        labels, counts = self.data.labels.unique(return_counts=True)
        return dict(zip(labels.tolist(), counts.tolist()))

    def origin_counts(self) -> dict[int, int]:
        """Exemplars per origin experience (0 = the first experience given to ``update``)."""
        origins, counts = self.origin.unique(return_counts=True)
        return dict(zip(origins.tolist(), counts.tolist()))

    def update(self, new: ImageSet, seen_classes: list[int], features: Callable[[ImageSet], torch.Tensor] | None = None) -> None:
        """Fold an experience's training set ``new`` in and re-select the memory.

        ``seen_classes``: every class seen so far (this experience's included), in the
        order that decides who gets the remainder of ``split_quota``; images of other
        classes are not kept by ``class_balanced``/``herding``. ``features`` maps an
        ImageSet to (len, D) image features; only ``herding`` needs it (ValueError
        without it). The memory never holds more than ``capacity(len(seen_classes))``
        exemplars; see the module docstring for the inclusion probabilities.
        """
        capacity = self.capacity(len(seen_classes))
        experience = self.experiences
        pool = new if self.data is None else self.data.concat(new)
        n_old = len(self)
        origin = torch.cat([self.origin, torch.full((len(new),), experience, dtype=torch.long)])
        if self.spec.policy == "herding":
            keep = self._herding(pool, n_old, split_quota(capacity, seen_classes), seen_classes, features)
        else:
            if self.spec.policy == "reservoir":
                pool_of = torch.zeros(len(pool), dtype=torch.long)

                def quota_of(ids: torch.Tensor) -> torch.Tensor:
                    return torch.full((len(ids),), capacity, dtype=torch.long)
            else:
                pool_of = pool.labels
                quota = split_quota(capacity, seen_classes)

                def quota_of(ids: torch.Tensor) -> torch.Tensor:
                    return torch.tensor([quota.get(c, 0) for c in ids.tolist()], dtype=torch.long)
            keep, self.blocks = select(self.blocks, pool_of, origin, n_old, experience, quota_of, self.generator)
            keep = keep[torch.randperm(len(keep), generator=self.generator)]  # no order left over from selection
        self.data = pool.subset(keep) if len(keep) else None
        self.origin = origin[keep]
        self.experiences += 1

    def _herding(self, pool: ImageSet, old: int, quota: dict[int, int], seen_classes: list[int], features) -> torch.Tensor:
        keep: list[torch.Tensor] = []
        for c in seen_classes:
            idx = (pool.labels == c).nonzero().flatten()
            old_idx, new_idx = idx[idx < old], idx[idx >= old]
            if len(idx) == 0 or quota[c] == 0:
                continue
            if len(new_idx) == 0:  # shrink: keep the prefix of the herding order
                keep.append(old_idx[: quota[c]])
            else:
                if features is None:
                    raise ValueError("herding needs image features")
                order = herding_order(features(pool.subset(idx)), quota[c])
                keep.append(idx[torch.tensor(order, dtype=torch.long)])
        return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A replay batch: uint8 images (n, 3, H, W), labels (n,) and dataset ids (n,).

        Drawn without replacement, as Mammoth's ``Buffer.get_data``
        (``np.random.choice(..., replace=False)``): no exemplar appears twice in a
        batch, and a batch is capped at the memory's size (n larger than the memory
        gives the whole memory once, as Mammoth does). Batches are drawn independently
        of each other, from the buffer's own generator. ValueError for n < 0 or an
        empty memory.
        """
        if n < 0:
            raise ValueError(f"sample size must be >= 0, got {n}")
        size = len(self)
        if size == 0:
            raise ValueError("cannot sample from an empty replay memory")
        index = torch.randperm(size, generator=self.generator)[:n]
        ids = getattr(self.data, "ids", None)  # None for a plugin's image set without ids
        return self.data.load(index), self.data.labels[index], None if ids is None else ids[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "experiences": self.experiences, "origin": self.origin,
                "blocks": dict(self.blocks), "data": None if self.data is None else self.data.state()}

    def load_state_dict(self, state: dict) -> None:
        from .data.files import image_set_from_state

        self.generator.set_state(state["generator"])
        self.experiences = int(state["experiences"])
        self.origin = state["origin"].long()
        self.blocks = {k: state["blocks"][k] for k in BLOCK_KEYS}
        self.data = None if state["data"] is None else image_set_from_state(state["data"])

"""Replay memory: which past training images a method may see again, and what they cost to keep.

The capacity is given as ``size`` (exemplars), ``per_class`` (grows with the
classes seen) or ``fraction`` of the stream's training set. Exemplars are
kept as a subset of the training data itself (uint8 pixels in memory, or
file references whose encoded bytes are counted), never as float tensors.
Selection is deterministic under the cell's seed and rebalanced whenever new
classes arrive.

Policies:
- ``class_balanced`` (default): a random, equal share per seen class;
- ``reservoir``: reservoir sampling over every sample in arrival order;
- ``herding``: per class, iCaRL's herding order on image features (the
  prefix of the order is kept when a class's share shrinks).
"""
from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .data.base import ImageSet

Policy = Literal["class_balanced", "reservoir", "herding"]


class BufferSpec(BaseModel):
    """How large the memory is and how it is filled; give exactly one of size, per_class, fraction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    def __init__(self, spec: BufferSpec, stream_train_size: int, seed: int):
        self.spec = spec
        self.generator = torch.Generator().manual_seed(seed + 7919)  # independent of the training order
        self.stream_train_size = stream_train_size
        self.data: ImageSet | None = None
        self.seen_samples = 0  # reservoir: samples offered so far
        self.class_seen: dict[int, int] = {}  # class_balanced: images of each class offered so far

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

    def update(self, new: ImageSet, seen_classes: list[int], features: Callable[[ImageSet], torch.Tensor] | None = None) -> None:
        """Fold an experience's training set in and shrink every class to its share."""
        capacity = self.capacity(len(seen_classes))
        if self.spec.policy == "reservoir":
            self._reservoir(new, capacity)
            return
        quota = split_quota(capacity, seen_classes)
        pool = new if self.data is None else self.data.concat(new)
        old = 0 if self.data is None else len(self.data)
        keep: list[torch.Tensor] = []
        for c in seen_classes:
            idx = (pool.labels == c).nonzero().flatten()
            old_idx, new_idx = idx[idx < old], idx[idx >= old]
            seen_before = self.class_seen.get(c, 0)
            self.class_seen[c] = seen_before + len(new_idx)
            if len(idx) == 0 or quota[c] == 0:
                continue
            if len(new_idx) == 0:  # shrink: keep the prefix (herding order, or an already random order)
                keep.append(old_idx[: quota[c]])
            elif self.spec.policy == "herding":
                if features is None:
                    raise ValueError("herding needs image features")
                order = herding_order(features(pool.subset(idx)), quota[c])
                keep.append(idx[torch.tensor(order, dtype=torch.long)])
            else:  # a uniform sample over every image of the class seen so far
                share_old = quota[c] * seen_before / (seen_before + len(new_idx))
                k_old = min(len(old_idx), round(share_old))
                k_new = min(len(new_idx), quota[c] - k_old)
                k_old = min(len(old_idx), quota[c] - k_new)  # fill from old if new ran short
                chosen = torch.cat([old_idx[:k_old], new_idx[torch.randperm(len(new_idx), generator=self.generator)[:k_new]]])
                keep.append(chosen[torch.randperm(len(chosen), generator=self.generator)])
        self.data = pool.subset(torch.cat(keep)) if keep else None

    def _reservoir(self, new: ImageSet, capacity: int) -> None:
        slots: list[tuple[str, int]] = [] if self.data is None else [("old", i) for i in range(len(self.data))]
        slots = slots[:capacity]
        for i in range(len(new)):
            self.seen_samples += 1
            if len(slots) < capacity:
                slots.append(("new", i))
            else:
                j = int(torch.randint(0, self.seen_samples, (1,), generator=self.generator))
                if j < capacity:
                    slots[j] = ("new", i)
        if not slots:
            self.data = None
            return
        pool = new if self.data is None else self.data.concat(new)
        offset = 0 if self.data is None else len(self.data)
        index = torch.tensor([i if src == "old" else offset + i for src, i in slots], dtype=torch.long)
        self.data = pool.subset(index)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n random exemplars (uint8 images, labels), with replacement across calls."""
        index = torch.randint(0, len(self), (n,), generator=self.generator)
        return self.data.load(index), self.data.labels[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "seen_samples": self.seen_samples,
                "class_seen": dict(self.class_seen), "data": None if self.data is None else self.data.state()}

    def load_state_dict(self, state: dict) -> None:
        from .data.base import image_set_from_state

        self.generator.set_state(state["generator"])
        self.seen_samples = state["seen_samples"]
        self.class_seen = dict(state["class_seen"])
        self.data = None if state["data"] is None else image_set_from_state(state["data"])

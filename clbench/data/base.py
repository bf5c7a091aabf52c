"""The dataset abstraction every stream is built from.

A dataset is two splits of labelled images plus what CLIP needs to name the
classes (class names and prompt templates) and, optionally, a visual domain
per image. Images are uint8 CHW tensors; the Learner resizes and normalises
them on the device, so datasets never depend on a particular model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch


class ImageSet:
    """Labelled images, addressable by index. Subclasses decide where pixels live."""

    labels: torch.Tensor  # int64 (N,), global class ids
    domains: torch.Tensor | None  # int64 (N,) domain ids, or None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, index: torch.Tensor) -> "ImageSet":
        raise NotImplementedError

    def load(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 images (len(index), 3, H, W) for the given positions."""
        raise NotImplementedError

    def concat(self, other: "ImageSet") -> "ImageSet":
        """This set followed by ``other`` (same kind of set)."""
        raise NotImplementedError

    def stored_bytes(self) -> int:
        """Bytes these images take as stored (pixels in memory, or files on disk), plus labels."""
        raise NotImplementedError

    def state(self) -> dict:
        """Tensors and plain values that rebuild this set (for checkpoints read with weights_only)."""
        raise NotImplementedError


    def where(self, classes=None, domains=None) -> "ImageSet":
        keep = torch.ones(len(self), dtype=torch.bool)
        if classes is not None:
            keep &= torch.isin(self.labels, torch.as_tensor(list(classes), dtype=torch.long))
        if domains is not None:
            if self.domains is None:
                raise ValueError("this image set has no domains")
            keep &= torch.isin(self.domains, torch.as_tensor(list(domains), dtype=torch.long))
        return self.subset(keep.nonzero().flatten())

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) batches; the last one may be smaller."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            yield self.load(index), self.labels[index]


class InMemoryImageSet(ImageSet):
    """All pixels in one uint8 tensor: the fast path for small datasets."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, 3, H, W)")
        if len(images) != len(labels) or (domains is not None and len(domains) != len(labels)):
            raise ValueError("images, labels and domains must have the same length")
        self.images = images
        self.labels = labels.long()
        self.domains = None if domains is None else domains.long()

    def subset(self, index: torch.Tensor) -> "InMemoryImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        domains = None if self.domains is None else self.domains[index]
        return InMemoryImageSet(self.images[index], self.labels[index], domains)

    def load(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]

    def to(self, device) -> "InMemoryImageSet":
        """Pixels on ``device``; labels stay on the host, so choosing classes never waits on the device."""
        return InMemoryImageSet(self.images.to(device), self.labels, self.domains)

    def concat(self, other: "InMemoryImageSet") -> "InMemoryImageSet":
        domains = None if self.domains is None or other.domains is None else torch.cat([self.domains, other.domains])
        return InMemoryImageSet(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]), domains)

    def stored_bytes(self) -> int:
        return self.images.numel() * self.images.element_size() + len(self) * 8

    def state(self) -> dict:
        return {"kind": "memory", "images": self.images, "labels": self.labels, "domains": self.domains}


def image_set_from_state(state: dict) -> ImageSet:
    if state["kind"] == "memory":
        return InMemoryImageSet(state["images"], state["labels"], state["domains"])
    from .files import FileImageSet

    return FileImageSet(state["paths"], state["labels"], state["domains"], state["size"], state["workers"])


@dataclass
class Dataset:
    name: str
    class_names: list[str]
    templates: list[str]  # prompt templates with one "{}" for the class name
    train: ImageSet
    test: ImageSet
    domain_names: list[str] | None = None
    #: class orders fixed by convention for some seeds (e.g. iCaRL's CIFAR-100 order)
    canonical_orders: dict[int, list[int]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_order(self, seed: int) -> list[int]:
        """The canonical order for a conventional seed, else a seeded permutation."""
        if seed in self.canonical_orders:
            return list(self.canonical_orders[seed])
        g = torch.Generator().manual_seed(int(seed))
        return torch.randperm(self.num_classes, generator=g).tolist()

    def prompts(self, class_index: int) -> list[str]:
        return [t.format(self.class_names[class_index]) for t in self.templates]

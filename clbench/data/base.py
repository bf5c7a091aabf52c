"""The dataset abstraction every stream is built from.

A dataset is two splits of labelled images plus what CLIP needs to name the
classes (class names and prompt templates) and, optionally, a visual domain
per image. Images are uint8 CHW tensors; the Learner resizes and normalises
them on the device, so datasets never depend on a particular model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import lazy_loader as lazy

from ..config import StreamConfig

torch = lazy.load("torch")  # imported on first use: validate and list never load it


class ImageSet:
    """Labelled images, addressable by index. Subclasses decide where pixels live."""

    labels: torch.Tensor  # int64 (N,), global class ids
    domains: torch.Tensor | None  # int64 (N,) domain ids, or None
    #: int64 (N,): each image's position in its dataset's training split, kept through subset/concat/where;
    #: per-sample method state (gcl_replay) needs it. A plugin's own subclass should carry it like labels;
    #: without it, batches report None ids and only methods that need ids refuse to run.
    ids: torch.Tensor

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

    def identity(self) -> str | None:
        """A key naming exactly the pixels this set yields (e.g. a hash of its files and decode size), so results
        computed from them can be shared between cells; None (the default): unknown, never shared."""
        return None


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
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None, with_ids: bool = False
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """(uint8 images, labels) batches, plus the images' dataset ids with ``with_ids``; the last may be smaller."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            if with_ids:
                ids = getattr(self, "ids", None)  # a plugin's own set may not carry ids
                yield self.load(index), self.labels[index], None if ids is None else ids[index]
            else:
                yield self.load(index), self.labels[index]

    def with_ids(self, ids: torch.Tensor) -> "ImageSet":
        """This set with new dataset ids (int64 (N,)); Dataset numbers its train split 0..N-1 with it."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.shape != self.labels.shape:
            raise ValueError("ids must have one entry per image")
        self.ids = ids
        return self


def default_ids(labels: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    """``ids`` as int64, or 0..N-1 for a set built without them."""
    return torch.arange(len(labels)) if ids is None else torch.as_tensor(ids, dtype=torch.long)


class InMemoryImageSet(ImageSet):
    """All pixels in one uint8 tensor: the fast path for small datasets."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor | None = None,
                 ids: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, 3, H, W)")
        if len(images) != len(labels) or (domains is not None and len(domains) != len(labels)):
            raise ValueError("images, labels and domains must have the same length")
        self.images = images
        self.labels = labels.long()
        self.domains = None if domains is None else domains.long()
        self.ids = default_ids(self.labels, ids)

    def subset(self, index: torch.Tensor) -> "InMemoryImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        domains = None if self.domains is None else self.domains[index]
        return InMemoryImageSet(self.images[index], self.labels[index], domains, self.ids[index])

    def load(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]

    def identity(self) -> str:
        """sha256 of the pixels (shape and bytes): the key of results computed from these images
        (clbench/shared_results.py). Computed once per set."""
        if getattr(self, "_identity", None) is None:
            import hashlib

            pixels = self.images.detach().cpu().contiguous()
            digest = hashlib.sha256(f"memory|{tuple(pixels.shape)}|".encode())
            digest.update(pixels.numpy().tobytes())
            self._identity = digest.hexdigest()
        return self._identity

    def to(self, device) -> "InMemoryImageSet":
        """Pixels on ``device``; labels stay on the host, so choosing classes never waits on the device."""
        moved = InMemoryImageSet(self.images.to(device), self.labels, self.domains, self.ids)
        moved._identity = getattr(self, "_identity", None)
        return moved

    def concat(self, other: "InMemoryImageSet") -> "InMemoryImageSet":
        domains = None if self.domains is None or other.domains is None else torch.cat([self.domains, other.domains])
        return InMemoryImageSet(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]), domains,
                                torch.cat([self.ids, other.ids]))

    def stored_bytes(self) -> int:
        return self.images.numel() * self.images.element_size() + len(self) * 8

    def state(self) -> dict:
        return {"kind": "memory", "images": self.images, "labels": self.labels, "domains": self.domains, "ids": self.ids}


#: the default class order: a torch permutation seeded by the cell's seed
SEEDED = StreamConfig.SEEDED_ORDER


@dataclass
class Dataset:
    name: str
    class_names: list[str]
    templates: list[str]  # prompt templates with one "{}" for the class name
    train: ImageSet
    test: ImageSet
    domain_names: list[str] | None = None
    #: published class orders beside ``seeded``: name -> permutation of 0..n-1 (each cites its source where built)
    named_orders: dict[str, list[int]] = field(default_factory=dict)
    #: class names exactly as the source ships them (torchvision's CIFAR-100 "aquarium_fish"); None: not offered
    raw_class_names: list[str] | None = None
    #: per class, its own prompt templates (a dataset sequence: each class keeps its dataset's); None: ``templates``
    class_templates: list[list[str]] | None = None

    def templates_of(self, class_index: int) -> list[str]:
        """The prompt templates of one class: its own (``class_templates``) or the dataset's."""
        return self.templates if self.class_templates is None else self.class_templates[class_index]

    def __post_init__(self):
        # one id per training image (0..N-1), whatever sets the plugin concatenated: per-sample state
        # (e.g. gcl_replay's moving averages) is indexed by it, for new and replayed images alike
        self.train.with_ids(torch.arange(len(self.train)))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_order(self, seed: int, name: str | None = None) -> list[int]:
        """The class ids in stream order, a list of length ``num_classes``.

        ``name`` None or ``"seeded"``: ``torch.randperm(num_classes)`` after ``manual_seed(seed)``,
        for every seed (1993 included: a published order is asked for by name). Any other
        name: that entry of ``named_orders``. Raises ValueError, naming the known orders,
        for a name this dataset does not offer.
        """
        if name is None or name == SEEDED:
            g = torch.Generator().manual_seed(int(seed))
            return torch.randperm(self.num_classes, generator=g).tolist()
        if name not in self.named_orders:
            raise ValueError(f"dataset '{self.name}' has no order '{name}'; known: {', '.join(self.order_names())}")
        return list(self.named_orders[name])

    def order_names(self) -> list[str]:
        """``seeded`` followed by the named orders this dataset offers."""
        return [SEEDED, *self.named_orders]

    def with_prompts(self, templates: list[str] | None = None, class_names: str = "clip") -> "Dataset":
        """A copy (sharing the image sets) that prompts CLIP differently.

        ``templates``: replaces the dataset's prompt templates (None keeps them); ``class_names``:
        ``clip`` keeps the names written for prompts, ``raw`` uses ``raw_class_names``. Raises
        ValueError for ``raw`` on a dataset without raw names, or for another value.
        """
        if class_names not in ("clip", "raw"):
            raise ValueError(f"class_names must be 'clip' or 'raw', not {class_names!r}")
        if class_names == "raw" and self.raw_class_names is None:
            raise ValueError(f"dataset '{self.name}' offers no raw class names; use 'clip'")
        names = list(self.raw_class_names) if class_names == "raw" else list(self.class_names)
        if templates:  # the stream's templates replace every class's own
            return replace(self, class_names=names, templates=list(templates), class_templates=None)
        return replace(self, class_names=names, templates=list(self.templates))

    def prompts(self, class_index: int) -> list[str]:
        return [t.format(self.class_names[class_index]) for t in self.templates_of(class_index)]

"""Several datasets as one: the class space and image sets of a dataset-incremental stream.

MTIL (Zheng et al., ICCV 2023) and X-TAIL (Xu et al., NeurIPS 2024) train CLIP
on a sequence of different datasets, each with its own classes and prompt
templates. ``merge_datasets`` lays them side by side: dataset k's class c
becomes global class ``offset_k + c`` (offsets in sequence order), each class
keeps its own dataset's templates (``Dataset.class_templates``), and every image
carries its dataset's position in the sequence as its domain id, so a stream
selects dataset k's images with ``where(domains=[k])``.

Images of different datasets differ in size (MNIST 28 px, CIFAR 32 px, files
decoded at the model's input size): every batch of a ``MergedImageSet`` comes
at one common size, the model's input size (bicubic, antialiased, as the
Learner would resize them), so new images and replayed exemplars of other
datasets join in one batch. A batch of one dataset comes through that
dataset's own loader (decode workers included).
"""
from __future__ import annotations

import lazy_loader as lazy

from .base import Dataset, ImageSet

torch = lazy.load("torch")


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> uint8 (B, 3, size, size), bicubic with antialiasing (as the Learner resizes)."""
    if images.shape[-2:] == (size, size):
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


class MergedImageSet(ImageSet):
    """Images of several image sets, each image addressed by (part, position in the part).

    ``parts``: the datasets' own sets (their labels local to each dataset); ``offsets[k]``:
    added to part k's labels to make global class ids; ``part`` and ``local`` (N,) int64:
    for each image, its part and its position there; ``size``: the side images are resized
    to when a batch mixes parts of different sizes. ``domains`` is the part index.
    """

    def __init__(self, parts: list[ImageSet], offsets: list[int], part: torch.Tensor, local: torch.Tensor,
                 size: int, ids: torch.Tensor | None = None):
        self.parts, self.offsets, self.size = list(parts), [int(o) for o in offsets], int(size)
        self.part = torch.as_tensor(part, dtype=torch.long)
        self.local = torch.as_tensor(local, dtype=torch.long)
        offset = torch.tensor(self.offsets, dtype=torch.long)
        labels = torch.zeros(len(self.part), dtype=torch.long)
        for k, p in enumerate(self.parts):
            mine = self.part == k
            labels[mine] = p.labels[self.local[mine]] + offset[k]
        self.labels = labels
        self.domains = self.part.clone()
        self.ids = torch.arange(len(labels)) if ids is None else torch.as_tensor(ids, dtype=torch.long)

    @classmethod
    def of(cls, parts: list[ImageSet], offsets: list[int], size: int) -> "MergedImageSet":
        """Every image of every part, in part order."""
        part = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(parts)])
        local = torch.cat([torch.arange(len(p)) for p in parts])
        return cls(parts, offsets, part, local, size)

    def subset(self, index: torch.Tensor) -> "MergedImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return MergedImageSet(self.parts, self.offsets, self.part[index], self.local[index], self.size, self.ids[index])._compact()

    def concat(self, other: "MergedImageSet") -> "MergedImageSet":
        """This set followed by ``other``: their parts joined (a part both hold is kept once), unused parts dropped.

        Works for sets restored from checkpoints too (a replay memory read back on resume, joined
        with the live stream's images), whose parts are other objects with the same content.
        """
        parts, offsets = list(self.parts), list(self.offsets)
        where = {id(p): k for k, p in enumerate(parts)}
        remap = []
        for p, o in zip(other.parts, other.offsets):
            if id(p) not in where:
                where[id(p)] = len(parts)
                parts.append(p)
                offsets.append(o)
            remap.append(where[id(p)])
        other_part = torch.tensor(remap, dtype=torch.long)[other.part] if len(other.part) else other.part
        return MergedImageSet(parts, offsets, torch.cat([self.part, other_part]), torch.cat([self.local, other.local]),
                              self.size, torch.cat([self.ids, other.ids]))._compact()

    def _compact(self) -> "MergedImageSet":
        """The same images with only the parts they use (so joins over many experiences do not pile up parts)."""
        used = self.part.unique().tolist()
        if len(used) == len(self.parts):
            return self
        remap = torch.full((len(self.parts),), -1, dtype=torch.long)
        remap[torch.tensor(used, dtype=torch.long)] = torch.arange(len(used))
        return MergedImageSet([self.parts[k] for k in used], [self.offsets[k] for k in used], remap[self.part], self.local,
                              self.size, self.ids)

    def _single_part(self) -> int | None:
        if len(self.part) and bool((self.part == self.part[0]).all()):
            return int(self.part[0])
        return None

    def load(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        part, local = self.part[index], self.local[index]
        pieces = {}
        for k in part.unique().tolist():
            mine = (part == k).nonzero().flatten()
            pieces[k] = (mine, self.parts[k].load(local[mine]))
        out = None
        for mine, images in pieces.values():
            images = _resize(images, self.size)
            if out is None:
                out = torch.empty((len(index),) + tuple(images.shape[1:]), dtype=torch.uint8)
            out[mine] = images
        return out if out is not None else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)

    def batches(self, batch_size, shuffle=False, generator=None, with_ids=False):
        k = self._single_part()
        if k is None:
            yield from super().batches(batch_size, shuffle, generator, with_ids)
            return
        # one dataset's images: its own loader (decode workers for files), labels made global
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        view = self.parts[k].subset(self.local[order])
        start = 0
        for images, _labels in view.batches(batch_size):
            index = order[start:start + len(images)]
            start += len(images)
            yield (_resize(images, self.size), self.labels[index]) + ((self.ids[index],) if with_ids else ())

    def stored_bytes(self) -> int:
        total = 0
        for k, p in enumerate(self.parts):
            mine = self.local[self.part == k]
            if len(mine):
                total += p.subset(mine).stored_bytes()
        return total

    def identity(self) -> str | None:
        """sha256 naming the pixels this set yields (clbench/data/decoded_cache.py): its parts' identities, which
        image of which part each position holds, and the common size; None when a part has none."""
        if getattr(self, "_identity", None) is None:
            from .decoded_cache import identity_key, tensor_digest

            parts = [getattr(p, "identity", lambda: None)() for p in self.parts]
            if any(p is None for p in parts):
                return None
            self._identity = identity_key("merged", self.size, [*parts, f"part {tensor_digest(self.part)}",
                                                                 f"local {tensor_digest(self.local)}"])
        return self._identity

    def state(self) -> dict:
        """Only the images this set holds: each used part cut to the positions it uses (a replay memory's
        checkpoint holds its exemplars, not every training image of their datasets)."""
        parts, local = [], self.local.clone()
        used = self.part.unique().tolist()
        part = torch.empty_like(self.part)
        for new, k in enumerate(used):
            mine = (self.part == k).nonzero().flatten()
            positions, inverse = self.local[mine].unique(return_inverse=True)
            parts.append(self.parts[k].subset(positions).state())
            local[mine] = inverse
            part[mine] = new
        return {"kind": "merged", "parts": parts, "offsets": [self.offsets[k] for k in used],
                "part": part, "local": local, "size": self.size, "ids": self.ids}


def few_shot(dataset: Dataset, shots: int, seed: int) -> Dataset:
    """The dataset with at most ``shots`` training images per class, drawn by a generator seeded with ``seed``.

    X-TAIL trains on 16 images per class of each dataset (RAIL ``configs/analytic_clip.yaml``,
    ``num_shots: 16``, drawn as CoOp's few-shot sampler draws them); the test split is kept whole.
    A class with fewer images keeps all of them. Positions keep their order in the split.
    """
    from dataclasses import replace

    generator = torch.Generator().manual_seed(int(seed))
    labels = dataset.train.labels
    keep = []
    for c in labels.unique().tolist():
        mine = (labels == c).nonzero().flatten()
        keep.append(mine[torch.randperm(len(mine), generator=generator)[:shots]])
    index = torch.cat(keep).sort().values if keep else torch.empty(0, dtype=torch.long)
    return replace(dataset, train=dataset.train.subset(index))


def merge_datasets(parts: list[tuple[str, Dataset]], size: int) -> Dataset:
    """One dataset holding ``parts`` ((label, dataset) in sequence order) side by side.

    Class ``c`` of the k-th dataset becomes ``sum(len(classes) of datasets before k) + c``;
    class names and per-class prompt templates follow; ``domain_names`` are the labels, one
    "domain" per dataset. ``size``: the side of images when a batch mixes datasets (the
    model's input size). ValueError for fewer than two datasets or a repeated label.
    """
    labels = [label for label, _ in parts]
    if len(parts) < 2:
        raise ValueError("a dataset sequence needs at least two datasets")
    if len(set(labels)) != len(labels):
        raise ValueError(f"dataset labels must be distinct, got {labels}")
    offsets, names, templates, total = [], [], [], 0
    for _, data in parts:
        offsets.append(total)
        names += list(data.class_names)
        templates += [list(data.templates_of(c)) for c in range(data.num_classes)]
        total += data.num_classes
    train = MergedImageSet.of([d.train for _, d in parts], offsets, size)
    test = MergedImageSet.of([d.test for _, d in parts], offsets, size)
    first = templates[0] if templates else ["a photo of a {}."]
    raw = None  # the sources' raw names, where every dataset offers them
    if all(d.raw_class_names is not None for _, d in parts):
        raw = [n for _, d in parts for n in d.raw_class_names]
    return Dataset(name="+".join(d.name for _, d in parts), class_names=names, templates=list(first), train=train,
                   test=test, domain_names=labels, class_templates=templates, raw_class_names=raw)

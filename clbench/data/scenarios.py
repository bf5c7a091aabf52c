"""Cutting a dataset into a stream of experiences.

Class-incremental: the classes, in a seeded or a published order, are split
into ``steps`` groups; experience t holds the images of its group.
Domain-incremental: one experience per visual domain, every class in each. The
class order and the classifier used to score each (step, test set) pair live
here, so the Learner and the metrics agree on them.

Class orders: ``seeded`` (the default, for every seed) is a torch permutation
seeded by the cell's seed; a dataset may offer published orders by name
(``Dataset.named_orders``, e.g. CIFAR-100's ``icarl`` and ``pycil``); a stream
may also give an explicit permutation.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from ..config import StreamPrompts
from ..errors import UserError
from .base import Dataset, ImageSet

CLASS_INCREMENTAL = "class_incremental"
DOMAIN_INCREMENTAL = "domain_incremental"
DATASET_INCREMENTAL = "dataset_incremental"
SCENARIOS = (CLASS_INCREMENTAL, DOMAIN_INCREMENTAL, DATASET_INCREMENTAL)
#: a dataset-incremental stream's evaluation rules: each test set over its own dataset's classes (MTIL's
#: task-aware rule, Zheng et al. 2023) or over the union of every dataset's classes (X-TAIL, Xu et al. 2024)
LABEL_SPACES = ("dataset", "all")


@dataclass
class Experience:
    index: int
    classes: list[int]  # the classes whose training images this experience holds
    train: ImageSet
    test: ImageSet
    domain: str | None = None


@dataclass
class Stream:
    label: str
    scenario: str
    dataset: Dataset
    experiences: list[Experience]
    class_order: list[int]  # the stream's classes in order (held-out control classes excluded)
    control: ImageSet | None = None  # test images of classes kept out of the stream
    control_classes: list[int] = field(default_factory=list)
    label_space: str | None = None  # dataset-incremental only: "dataset" (MTIL) or "all" (X-TAIL)

    def seen(self, t: int) -> list[int]:
        """Classes of experiences 0..t, in stream order."""
        if self.scenario == DOMAIN_INCREMENTAL:
            return list(self.class_order)
        return [c for exp in self.experiences[: t + 1] for c in exp.classes]

    def eval_classes(self, t: int, j: int) -> list[int]:
        """The classifier's label space for experience j's test set after step t.

        Class- and domain-incremental (task-agnostic): the seen classes; for an
        experience not yet trained (j > t) its own classes are added, so CLIP's
        zero-shot transfer to upcoming classes (forward transfer) can be measured
        at all. Dataset-incremental: experience j's own dataset's classes with
        ``label_space: dataset`` (MTIL's task-aware rule, ZSCL's evaluation code),
        every dataset's classes, trained or not, with ``all`` (X-TAIL: RAIL's
        evaluation over the merged class names of the whole sequence).
        """
        if self.scenario == DATASET_INCREMENTAL:
            return list(self.experiences[j].classes) if self.label_space == "dataset" else list(self.class_order)
        classes = self.seen(t)
        if j > t:
            classes = classes + [c for c in self.experiences[j].classes if c not in classes]
        return classes

    def to_device(self, device) -> None:
        """Move image sets' pixels to ``device`` (labels stay on the host): in-memory sets, and decoded (cached)
        file-backed sets that fit in a quarter of the device's free memory; other file-backed sets stay.
        A set several experiences share (one test set for every domain) is moved once and stays shared."""
        moved: dict[int, tuple[ImageSet, ImageSet]] = {}  # id -> (set, moved set); the set is kept so ids stay unique

        def move(data: ImageSet) -> ImageSet:
            if id(data) not in moved:
                moved[id(data)] = (data, _on_device(data, device))
            return moved[id(data)][1]

        for exp in self.experiences:
            exp.train, exp.test = move(exp.train), move(exp.test)
        if self.control is not None:
            self.control = move(self.control)

    @property
    def class_order_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.class_order).encode()).hexdigest()[:16]


def _on_device(data: ImageSet, device) -> ImageSet:
    """``data`` with its pixels on ``device`` when it is in memory, or decoded and fitting; else ``data``."""
    if hasattr(data, "images"):
        return data.to(device)
    if hasattr(data, "pixel_bytes") and fits_on_device(device, data.pixel_bytes()):
        return data.to(device)
    return data


def fits_on_device(device, nbytes: int) -> bool:
    """Whether ``nbytes`` take at most a quarter of a CUDA device's free memory (False for any other device)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= free // 4


def numpy_permutation(n: int, seed: int) -> list[int]:
    """``np.random.seed(seed); np.random.permutation(n)`` as a list, computed on a private legacy RandomState.

    The rule behind the "seed 1993" orders of PyCIL (G-U-N/PyCIL utils/data_manager.py,
    ``_setup_data`` with ``shuffle``), UCIR (hshustc/CVPR19_Incremental_Learning
    imagenet-class-incremental/class_incremental_cosine_imagenet.py) and PODNet's
    ImageNet-100 order (arthurdouillard/incremental_learning.pytorch
    options/data/imagenet100_1order.yaml). numpy keeps the legacy stream fixed across
    versions (NEP 19), and the global numpy state is left untouched.
    """
    return np.random.RandomState(seed).permutation(n).tolist()


def resolve_class_order(dataset: Dataset, seed: int, order: str | list[int] | None, where: str) -> list[int]:
    """The stream's class order (a permutation of 0..n-1) from a name, an explicit list, or None (seeded).

    Raises UserError naming ``<where>.class_order`` for an order the dataset does not offer
    or a list that is not a permutation of its class ids.
    """
    if order is None or isinstance(order, str):
        try:
            return dataset.class_order(seed, order)
        except ValueError as exc:  # a name the dataset does not offer
            raise UserError(f"{where}.class_order: {exc}") from None
    n = dataset.num_classes
    if sorted(order) != list(range(n)):
        raise UserError(f"{where}.class_order: must be a permutation of 0..{n - 1} for dataset '{dataset.name}'")
    return list(order)


def apply_prompts(dataset: Dataset, prompts: dict | None, where: str) -> Dataset:
    """The dataset as a stream's ``prompts:`` mapping ({templates, class_names}, keys optional) names its classes.

    Raises UserError naming ``<where>.prompts`` for a template without exactly one ``{}``
    or for raw names the dataset does not have.
    """
    if not prompts:
        return dataset
    templates = prompts.get("templates")
    for template in templates or []:
        problem = StreamPrompts.template_problem(template)
        if problem:
            raise UserError(f"{where}.prompts.templates: template {template!r} {problem}")
    try:
        return dataset.with_prompts(templates, prompts.get("class_names", "clip"))
    except ValueError as exc:
        raise UserError(f"{where}.prompts.class_names: {exc}") from None


def split_evenly(items: list[int], parts: int) -> list[list[int]]:
    """Contiguous chunks whose sizes differ by at most one (larger ones first)."""
    q, r = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        size = q + (1 if i < r else 0)
        out.append(items[start : start + size])
        start += size
    return out


def build_stream(
    dataset: Dataset,
    scenario: str,
    seed: int,
    label: str,
    steps: int | None = None,
    class_order: str | list[int] | None = None,
    domains: list[str] | None = None,
    holdout_classes: int | list[int] = 0,
    where: str = "stream",
    prompts: dict | None = None,
    label_space: str | None = None,
) -> Stream:
    """The stream of experiences cut from ``dataset``.

    ``class_order``: a name the dataset offers (``seeded`` when None) or an explicit
    permutation; ``holdout_classes``: the control set, the order's last k classes or the listed
    class ids (in that order; the stream keeps the order's other classes); ``prompts``: ``{templates, class_names}`` replacing how CLIP names the
    classes (the stream's ``dataset`` is then the re-prompted copy). Raises UserError
    naming the stream key for any input that cannot make a stream.
    """
    dataset = apply_prompts(dataset, prompts, where)
    order = resolve_class_order(dataset, seed, class_order, where)
    if isinstance(holdout_classes, list):
        outside = next((c for c in holdout_classes if c not in order), None)
        if outside is not None:
            raise UserError(f"{where}.holdout_classes: class {outside} is not one of the dataset's {len(order)} classes; "
                            f"list class ids below {len(order)}")
        control_classes = list(holdout_classes)
        control = set(control_classes)
        order = [c for c in order if c not in control]
        if not order:
            raise UserError(f"{where}.holdout_classes: {len(control_classes)} classes leave no class for the stream")
    else:
        if holdout_classes >= len(order):
            raise UserError(f"{where}.holdout_classes: {holdout_classes} leaves no class for the stream ({len(order)} classes)")
        control_classes = order[len(order) - holdout_classes :] if holdout_classes else []
        order = order[: len(order) - holdout_classes]

    domain_ids = None
    if domains is not None:
        names = dataset.domain_names or []
        missing = [d for d in domains if d not in names]
        if missing:
            raise UserError(f"{where}.domains: unknown domain '{missing[0]}' for dataset '{dataset.name}'; it has {names or 'no domains'}")
        domain_ids = [names.index(d) for d in domains]
    train = dataset.train if domain_ids is None else dataset.train.where(domains=domain_ids)
    # a test split without domains is one held-out set for every domain (CORe50's NI protocol)
    shared_test = dataset.test.domains is None
    test = dataset.test if domain_ids is None or shared_test else dataset.test.where(domains=domain_ids)

    experiences = []
    if scenario == CLASS_INCREMENTAL:
        steps = steps or 1
        if steps > len(order):
            raise UserError(f"{where}.steps: {steps} steps but the stream has only {len(order)} classes; use at most {len(order)}")
        for t, group in enumerate(split_evenly(order, steps)):
            experiences.append(Experience(t, group, train.where(classes=group), test.where(classes=group)))
    elif scenario == DOMAIN_INCREMENTAL:
        names = dataset.domain_names
        if not names:
            raise UserError(f"{where}.scenario: dataset '{dataset.name}' has no domains; use class_incremental")
        ids = domain_ids if domain_ids is not None else list(range(len(names)))
        if steps is not None and steps != len(ids):
            raise UserError(f"{where}.steps: a domain-incremental stream has one step per domain ({len(ids)}); drop 'steps'")
        common = test.where(classes=order) if shared_test else None  # one object: its features are cached once
        for t, d in enumerate(ids):
            test_d = common if shared_test else test.where(classes=order, domains=[d])
            experiences.append(Experience(t, list(order), train.where(classes=order, domains=[d]), test_d, names[d]))
    elif scenario == DATASET_INCREMENTAL:
        names = dataset.domain_names or []
        if holdout_classes:
            raise UserError(f"{where}.holdout_classes: a dataset-incremental stream keeps no control set; drop it")
        if steps is not None and steps != len(names):
            raise UserError(f"{where}.steps: a dataset-incremental stream has one step per dataset ({len(names)}); drop 'steps'")
        order = list(range(dataset.num_classes))  # dataset by dataset, each in its own label order
        offsets = list(getattr(dataset.train, "offsets", [])) + [dataset.num_classes]
        if not names or len(offsets) != len(names) + 1:
            raise UserError(f"{where}.scenario: dataset '{dataset.name}' is not a sequence of datasets; list them under 'datasets'")
        for d, name in enumerate(names):
            classes = list(range(offsets[d], offsets[d + 1]))
            experiences.append(Experience(d, classes, train.where(domains=[d]), test.where(domains=[d]), name))
    else:
        raise UserError(f"{where}.scenario: unknown scenario '{scenario}'; use one of {', '.join(SCENARIOS)}")

    for exp in experiences:
        if len(exp.train) == 0 or len(exp.test) == 0:
            raise UserError(f"{where}: experience {exp.index} has no {'training' if len(exp.train) == 0 else 'test'} images")
    control = test.where(classes=control_classes) if control_classes else None
    space = (label_space or "dataset") if scenario == DATASET_INCREMENTAL else None
    return Stream(label, scenario, dataset, experiences, order, control, control_classes, space)

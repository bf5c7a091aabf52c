"""imagenet1k and imagenet100: the ILSVRC-2012 folder layout, named the way CLIP names them.

Expected at ``<data root>/imagenet/{train,val}/<wnid>/*.JPEG`` (val sorted
into class folders, as most tools expect). Class ids follow the standard
order (sorted wnids, ``lists/imagenet1k_wnids.txt``); names and the 80 prompt
templates are CLIP's, from open_clip.

``imagenet100`` reads the same tree and keeps a published 100-class subset,
named by its required ``subset`` option; each subset brings its own order:

- ``podnet``: PODNet's ImageNet-100, arthurdouillard/incremental_learning.pytorch
  imagenet_split/val_100.txt (and train_100.txt), lines ``val/<wnid>/<file> <label>``
  whose label k is the k-th wnid in sorted order, k < 100 (read in the stored
  val_100.txt: labels 0-34, 55-62 and 98-99 checked, lines in wnid order). Class
  ids are those labels. Order ``podnet``: options/data/imagenet100_1order.yaml
  (68, 56, 78, 8, 23, ...), which is numpy's seed-1993 permutation.
- ``ucir``: UCIR's ``seed_1993_subset_100_imagenet``, hshustc/CVPR19_Incremental_Learning
  imagenet-class-incremental/gen_imagenet_subset.py: ``np.random.seed(1993);
  np.random.choice(<the 1000 sorted train folders>, 100, replace=False)``. Its
  training script reads the copied subset with ImageFolder, so class ids follow
  the subset's sorted wnids; order ``ucir``: class_incremental_cosine_imagenet.py
  (``np.random.seed(1993)``, then ``np.random.shuffle(np.arange(100))``).

Both are computed from the sorted wnid list with numpy's legacy RandomState;
no subset list is stored.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..facts import DatasetFacts
from .base import Dataset
from .folders import scan_split
from .root import dataset_dir
from .scenarios import numpy_permutation

LISTS = Path(__file__).parent / "lists"
FOLDER = "imagenet"
HINT = "get ILSVRC-2012 from image-net.org and lay it out as imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG"
SEED_1993 = 1993  # the seed of UCIR's subset and of the PODNet / UCIR / PyCIL class orders
#: subset -> the named orders it offers beside seeded
SUBSET_ORDERS = {"podnet": ("podnet",), "ucir": ("ucir",)}


def read_list(name: str) -> list[str]:
    """The non-empty lines of ``clbench/data/lists/<name>``, stripped."""
    return [line.strip() for line in (LISTS / name).read_text().splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def clip_names_and_templates() -> tuple[list[str], list[str]]:
    """CLIP's 1000 ImageNet class names and its 80 prompt templates, as open_clip ships them (zero_shot_metadata.py).

    The file is loaded on its own, without importing open_clip (whose import loads torch), so
    ``clbench validate`` stays instant. ImportError when open_clip is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.origin:
        raise ImportError("open_clip is not installed; pip install open_clip_torch")
    path = Path(spec.origin).parent / "zero_shot_metadata.py"
    meta_spec = importlib.util.spec_from_file_location("clbench_open_clip_zero_shot_metadata", path)
    meta = importlib.util.module_from_spec(meta_spec)
    meta_spec.loader.exec_module(meta)
    return list(meta.IMAGENET_CLASSNAMES), [t("{}") for t in meta.OPENAI_IMAGENET_TEMPLATES]


def subset_wnids(subset: str) -> list[str]:
    """The 100 wnids of a published ImageNet-100 subset, in class-id order (sources in the module docstring).

    Raises ValueError for an unknown subset name.
    """
    wnids = read_list("imagenet1k_wnids.txt")  # sorted, as ImageFolder and PODNet's labels order them
    if subset == "podnet":
        return wnids[:100]
    if subset == "ucir":
        return sorted(wnids[i] for i in numpy_permutation(len(wnids), SEED_1993)[:100])
    raise ValueError(f"unknown ImageNet-100 subset '{subset}'; known: {', '.join(SUBSET_ORDERS)}")


class ImageNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Optional[str] = None
    image_size: Optional[int] = Field(None, ge=8)  # decode size; default: the model's input size
    workers: Optional[int] = Field(None, ge=0)  # decoding processes; default min(8, CPUs)


class ImageNet100Options(ImageNetOptions):
    subset: Literal["podnet", "ucir"]  # required: which published 100-class list


def _build(name: str, wnids: list[str], opts: ImageNetOptions, named_orders: dict) -> Dataset:
    base = dataset_dir(opts.root, FOLDER, HINT)
    all_wnids = read_list("imagenet1k_wnids.txt")
    names, templates = clip_names_and_templates()
    index = {w: i for i, w in enumerate(all_wnids)}
    present = [w for w in wnids if (base / "train" / w).is_dir()]
    if name == "imagenet1k":
        wnids = present or wnids  # a partial copy runs on the classes it has
    sets = {split: scan_split(base / split, wnids, size=opts.image_size, workers=opts.workers) for split in ("train", "val")}
    return Dataset(
        name=name, class_names=[names[index[w]] for w in wnids], templates=templates,
        train=sets["train"], test=sets["val"], named_orders=named_orders,
    )


def build_imagenet1k(**options) -> Dataset:
    """ImageNet-1K from ``<root>/imagenet`` (``ImageNetOptions`` keys); a partial copy gives the classes it has."""
    return _build("imagenet1k", read_list("imagenet1k_wnids.txt"), ImageNetOptions(**options), {})


def build_imagenet100(**options) -> Dataset:
    """The ``subset`` option's published ImageNet-100 from ``<root>/imagenet``; UserError when a class folder is missing."""
    opts = ImageNet100Options(**options)
    order = numpy_permutation(100, SEED_1993)
    return _build("imagenet100", subset_wnids(opts.subset), opts, {name: list(order) for name in SUBSET_ORDERS[opts.subset]})


class ImageNet1k(DatasetPlugin):
    """ILSVRC-2012 in class folders, with CLIP's class names and 80 prompt templates."""

    name = "imagenet1k"
    Options = ImageNetOptions
    input_size_option = "image_size"

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        # the class count is left unknown: a partial copy has fewer classes
        return DatasetFacts(num_templates=len(clip_names_and_templates()[1]), domains=())

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_imagenet1k(**options)


class ImageNet100(DatasetPlugin):
    """A published 100-class ImageNet subset (subset: podnet or ucir), read from the ImageNet-1K tree."""

    name = "imagenet100"
    Options = ImageNet100Options
    input_size_option = "image_size"

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        return DatasetFacts(num_classes=100, num_templates=len(clip_names_and_templates()[1]), domains=())

    @classmethod
    def class_orders(cls, options: dict) -> tuple[str, ...]:
        return SUBSET_ORDERS.get(options.get("subset"), ())

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_imagenet100(**options)


@hookimpl
def clbench_add_datasets(register):
    register(ImageNet1k)
    register(ImageNet100)

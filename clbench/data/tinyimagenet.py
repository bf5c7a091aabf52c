"""tinyimagenet: Tiny ImageNet (200 classes of 64x64 images) exactly as tiny-imagenet-200.zip unpacks.

Expected at ``<data root>/tiny-imagenet-200/`` (or the stream's ``path``)::

    wnids.txt                              200 wnids, one a line; class k is line k+1
    words.txt                              "<wnid>\\t<synonyms, comma-separated>" (all of WordNet)
    train/<wnid>/images/<wnid>_<k>.JPEG    500 training images a class
    train/<wnid>/<wnid>_boxes.txt          bounding boxes (not read)
    val/images/val_<k>.JPEG                10,000 labelled images, 50 a class
    val/val_annotations.txt                "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"
    test/images/test_<k>.JPEG              unlabelled (not read)

The labelled ``val`` split is the test set, as every continual-learning paper uses it.
Class ids follow wnids.txt's line order (not sorted): the ids MoE-Adapters4CL's class names and
order refer to (its names file, below, lists the classes in that order; it reads the data with
Continuum's ``TinyImageNet200``, whose recent versions map ``wnid_to_label`` from wnids.txt).
``lists/tinyimagenet_wnids.txt`` keeps the shipped file's order (n02124075 first).
Class names are CLIP's ImageNet names of the wnids (open_clip's ``IMAGENET_CLASSNAMES``,
the list MoE-Adapters4CL ships as JiazuoYu/MoE-Adapters4CL cil/dataset_reqs/tinyimagenet_classes.txt:
identical for all 200); raw names (``prompts: {class_names: raw}``) are words.txt's first
synonym ("Egyptian cat"). Prompts: CLIP's 80 ImageNet templates.

Class order ``moe_adapters``: JiazuoYu/MoE-Adapters4CL cil/class_orders/tinyimagenet.yaml
(131, 181, 22, 172, 144, ...), over the wnids.txt ids; offered when wnids.txt is the shipped
one. A copy whose wnids.txt lists fewer classes runs on those classes.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import lazy_loader as lazy
from pydantic import BaseModel, ConfigDict, Field

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..errors import UserError
from ..facts import DatasetFacts
from .base import Dataset
from .files import FileImageSet, list_images
from .imagenet import clip_names_and_templates, read_list
from .layout import locate, read_lines
from .root import inside

torch = lazy.load("torch")  # imported on first use: validate and list never load it

FOLDER = "tiny-imagenet-200"
HINT = "get tiny-imagenet-200.zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip and unpack it there"
#: ``class_order: moe_adapters``, JiazuoYu/MoE-Adapters4CL cil/class_orders/tinyimagenet.yaml (run_experiment_tiny*.sh),
#: class ids in wnids.txt order (its dataset_reqs/tinyimagenet_classes.txt lists them so, Continuum's reading)
MOE_ADAPTERS_ORDER = [
    131, 181, 22, 172, 144, 92, 97, 187, 58, 93, 6, 70, 106, 68, 153, 168, 179, 199, 29, 46, 9, 142, 134, 88, 193,
    110, 26, 32, 117, 112, 17, 39, 166, 13, 94, 138, 109, 147, 51, 101, 59, 188, 116, 5, 170, 99, 100, 167, 180, 146,
    65, 1, 104, 43, 38, 184, 123, 171, 137, 162, 71, 44, 95, 174, 12, 7, 54, 152, 21, 47, 28, 176, 34, 2, 132, 118,
    42, 189, 150, 14, 165, 41, 192, 45, 82, 128, 63, 57, 197, 160, 53, 75, 108, 135, 121, 159, 183, 67, 169, 50, 87,
    69, 89, 196, 115, 19, 148, 96, 86, 11, 8, 60, 33, 173, 78, 4, 119, 105, 182, 127, 177, 30, 186, 40, 49, 178, 76,
    157, 161, 73, 164, 151, 31, 74, 191, 27, 125, 198, 81, 20, 155, 114, 139, 36, 61, 56, 145, 48, 16, 83, 62, 85,
    126, 0, 102, 23, 3, 140, 15, 195, 133, 113, 190, 141, 52, 163, 156, 80, 111, 90, 175, 143, 120, 84, 18, 25, 79,
    37, 154, 136, 64, 158, 24, 185, 72, 35, 129, 55, 149, 91, 122, 77, 103, 124, 130, 66, 10, 107, 194, 98,
]
ORDERS = ("moe_adapters",)


class TinyImageNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Optional[str] = None  # data root; the files are in <root>/tiny-imagenet-200
    path: Optional[str] = None  # the tiny-imagenet-200 folder itself (absolute, or below root), instead of root's
    image_size: Optional[int] = Field(None, ge=8)  # decode size; default: the model's input size
    workers: Optional[int] = Field(None, ge=0)  # decoding processes; default min(8, CPUs)


@functools.lru_cache(maxsize=1)
def shipped_wnids() -> tuple[str, ...]:
    """The 200 wnids in the shipped wnids.txt's order (``lists/tinyimagenet_wnids.txt``)."""
    return tuple(read_list("tinyimagenet_wnids.txt"))


def clip_name_of(wnids: list[str], fallback: dict[str, str]) -> list[str]:
    """CLIP's ImageNet name of each wnid (open_clip); a wnid outside ImageNet-1K keeps ``fallback[wnid]``."""
    names, _ = clip_names_and_templates()
    index = {w: i for i, w in enumerate(read_list("imagenet1k_wnids.txt"))}
    return [names[index[w]] if w in index else fallback[w] for w in wnids]


def _first_synonyms(path: Path, wnids: list[str]) -> dict[str, str]:
    wanted, found = set(wnids), {}
    for number, line in read_lines(path, HINT):
        wnid, _, words = line.partition("\t")
        if wnid in wanted:
            if not words.strip():
                raise UserError(f"{path}:{number}: malformed line '{line}'; expected '<wnid>\\t<names>'")
            found[wnid] = words.split(",")[0].strip()
    missing = [w for w in wnids if w not in found]
    if missing:
        raise UserError(f"{path}: no names for wnid {missing[0]}; the file is incomplete, unpack it again")
    return found


def _val_split(base: Path, label: dict[str, int], size: int, workers) -> FileImageSet:
    path = base / "val" / "val_annotations.txt"
    paths, labels = [], []
    for number, line in read_lines(path, HINT):
        fields = line.split("\t")
        where = f"{path}:{number}"
        if len(fields) < 2:
            raise UserError(f"{where}: malformed line '{line}'; expected '<file>\\t<wnid>\\t<box>'")
        if fields[1] not in label:
            raise UserError(f"{where}: wnid {fields[1]} is not in wnids.txt")
        image = inside(base / "val" / "images", fields[0], where)
        if not image.is_file():
            raise UserError(f"{where}: image {image} not found; the val images are missing or incomplete")
        paths.append(str(image))
        labels.append(label[fields[1]])
    if not paths:
        raise UserError(f"{path}: no images listed")
    return FileImageSet(paths, torch.tensor(labels), size=size, **({"workers": workers} if workers is not None else {}))


def build_tinyimagenet(**options) -> Dataset:
    """Tiny ImageNet from ``<root>/tiny-imagenet-200`` (``TinyImageNetOptions`` keys): train split for training,
    the labelled val split as the test set. UserError for a missing folder or file, or a malformed line."""
    opts = TinyImageNetOptions(**options)
    base = locate("tinyimagenet", FOLDER, opts.root, opts.path, HINT)
    wnids = [line for _, line in read_lines(base / "wnids.txt", HINT)]
    if len(set(wnids)) != len(wnids):
        raise UserError(f"{base / 'wnids.txt'}: a wnid is listed twice")
    label = {w: k for k, w in enumerate(wnids)}
    size = opts.image_size or 224
    paths, labels = [], []
    for k, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise UserError(f"{folder}: class folder missing; wnids.txt lists {wnid}, unpack the archive again")
        images = list_images(folder)
        if not images:
            raise UserError(f"{folder}: class '{wnid}' has no images")
        paths.extend(str(p) for p in images)
        labels.extend([k] * len(images))
    kwargs = {"workers": opts.workers} if opts.workers is not None else {}
    train = FileImageSet(paths, torch.tensor(labels), size=size, **kwargs)
    raw = _first_synonyms(base / "words.txt", wnids)
    _, templates = clip_names_and_templates()
    orders = {"moe_adapters": list(MOE_ADAPTERS_ORDER)} if tuple(wnids) == shipped_wnids() else {}
    return Dataset(
        name="tinyimagenet", class_names=clip_name_of(wnids, raw), templates=list(templates),
        train=train, test=_val_split(base, label, size, opts.workers), named_orders=orders,
        raw_class_names=[raw[w] for w in wnids],
    )


class TinyImageNet(DatasetPlugin):
    """Tiny ImageNet-200 as shipped (val split as test), CLIP's names and templates; order moe_adapters."""

    name = "tinyimagenet"
    Options = TinyImageNetOptions
    input_size_option = "image_size"
    offers_raw_names = True

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        return DatasetFacts(num_classes=200, num_templates=len(clip_names_and_templates()[1]), domains=(), train_per_class=500)

    @classmethod
    def class_orders(cls, options: dict) -> tuple[str, ...]:
        return ORDERS

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_tinyimagenet(**options)


@hookimpl
def clbench_add_datasets(register):
    register(TinyImageNet)

"""imagenet_r: ImageNet-R (renditions of 200 ImageNet classes) with the train/test split CL papers use.

Expected at ``<data root>/imagenet-r/`` (or the stream's ``path``), as imagenet-r.tar unpacks::

    imagenet-r/<wnid>/<kind>_<k>.jpg       30,000 images of 200 classes (art_0.jpg, sketch_12.jpg, ...)

ImageNet-R ships no split. ``split`` picks the published one:

- ``coda`` (default): CODA-Prompt's split files, ``imagenet-r_train.yaml`` (24,000 images) and
  ``imagenet-r_test.yaml`` (6,000), placed in the imagenet-r folder. Source: GT-RIPL/CODA-Prompt
  dataloaders/splits/ (read by dataloaders/dataloader.py ``iIMAGENET_R``; one 80/20 draw over
  the whole set, fixed in those files). Each file is YAML
  ``{data: [<path>, ...], targets: [<id>, ...]}``; a path's last two parts (``<wnid>/<file>``)
  name the image, whatever prefix the copy carries (``data/imagenet-r/...``); the files'
  ``targets`` are CODA-Prompt's own numbering, only checked to name one class each.
- ``folders``: a copy already split into ``imagenet-r/train/<wnid>/*`` and ``imagenet-r/test/<wnid>/*``,
  the layout of the pre-split download LAMDA-PILOT and APER read (sun-hailong/LAMDA-PILOT
  utils/data.py ``iImageNetR``: ``ImageFolder("./data/imagenet-r/train/")``).

Class ids: the sorted wnids (ImageFolder's order, PILOT's), a copy with fewer classes runs on
those it has. Names and the 80 prompt templates are CLIP's ImageNet ones (open_clip). Class
order ``pycil``: ``np.random.seed(1993); np.random.permutation(200)``, LAMDA-PILOT's
utils/data_manager.py ``_setup_data`` with exps/imagenetR/*.json (``"shuffle": true``,
``"seed": [1993]``); offered with all 200 classes. The 200 wnids: hendrycks/imagenet-r eval.py
(``imagenet_r_wnids``; their positions among the sorted ImageNet-1K wnids below).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, Optional

import lazy_loader as lazy
from pydantic import BaseModel, ConfigDict, Field

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..errors import UserError
from ..facts import DatasetFacts
from .base import Dataset
from .files import FileImageSet, list_images
from .imagenet import clip_names_and_templates, read_list
from .layout import locate
from .scenarios import numpy_permutation

torch = lazy.load("torch")  # imported on first use: validate and list never load it

FOLDER = "imagenet-r"
HINT = "get imagenet-r.tar from https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar and unpack it there"
SPLIT_URL = "https://github.com/GT-RIPL/CODA-Prompt/tree/main/dataloaders/splits"
SPLIT_FILES = {"train": "imagenet-r_train.yaml", "test": "imagenet-r_test.yaml"}
PYCIL_SEED = 1993
#: positions of ImageNet-R's 200 wnids among the 1000 sorted ImageNet-1K wnids; hendrycks/imagenet-r eval.py
#: (the comment under ``imagenet_r_mask``)
IMAGENET_R_INDICES = [
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99, 100, 105, 107, 113,
    122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163, 171, 172, 178, 187, 195, 199, 203, 207,
    208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289,
    291, 292, 293, 296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341, 344,
    347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435, 437,
    441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570, 579, 583, 587, 593, 594,
    596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768, 774, 776, 779, 780, 787, 805, 812, 815, 820,
    824, 833, 847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951,
    953, 954, 957, 963, 965, 967, 980, 981, 983, 988,
]


class ImageNetROptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Optional[str] = None  # data root; the images are in <root>/imagenet-r
    path: Optional[str] = None  # the imagenet-r folder itself (absolute, or below root), instead of root's
    split: Literal["coda", "folders"] = "coda"  # CODA-Prompt's split files, or a copy split into train/ and test/
    image_size: Optional[int] = Field(None, ge=8)  # decode size; default: the model's input size
    workers: Optional[int] = Field(None, ge=0)  # decoding processes; default min(8, CPUs)


@functools.lru_cache(maxsize=1)
def imagenet_r_wnids() -> tuple[str, ...]:
    """ImageNet-R's 200 wnids, sorted (hendrycks/imagenet-r eval.py)."""
    wnids = read_list("imagenet1k_wnids.txt")
    return tuple(wnids[i] for i in IMAGENET_R_INDICES)


def _check_wnid(wnid: str, where: str) -> None:
    if wnid not in imagenet_r_wnids():
        raise UserError(f"{where}: '{wnid}' is not one of ImageNet-R's 200 classes; is this the imagenet-r folder?")


def _read_split_file(path: Path) -> list[tuple[str, str, int]]:
    """``(wnid, file name, target)`` for each entry of a CODA-Prompt split file."""
    import yaml

    if not path.is_file():
        raise UserError(f"{path}: split file missing; put CODA-Prompt's {path.name} ({SPLIT_URL}) there, or set 'split: folders'")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not readable YAML ({' '.join(str(exc).split())}); download it again") from None
    data = config.get("data") if isinstance(config, dict) else None
    targets = config.get("targets") if isinstance(config, dict) else None
    if not isinstance(data, list) or not isinstance(targets, list) or len(data) != len(targets) or not data:
        raise UserError(f"{path}: expected 'data' and 'targets' lists of the same length (CODA-Prompt's format)")
    entries = []
    for k, (item, target) in enumerate(zip(data, targets)):
        parts = str(item).replace("\\", "/").split("/")
        if len(parts) < 2 or not parts[-1] or parts[-1] in (".", "..") or not isinstance(target, int):
            raise UserError(f"{path}: entry {k} ('{item}', {target!r}) is not '<...>/<wnid>/<file>' with an integer target")
        _check_wnid(parts[-2], f"{path}: entry {k}")
        entries.append((parts[-2], parts[-1], target))
    return entries


def _coda_splits(base: Path) -> dict[str, list[tuple[str, Path]]]:
    splits, wnid_of_target = {}, {}
    for split, name in SPLIT_FILES.items():
        path = base / name
        items = []
        for wnid, file, target in _read_split_file(path):
            if wnid_of_target.setdefault(target, wnid) != wnid:
                raise UserError(f"{path}: target {target} is {wnid_of_target[target]} elsewhere but {wnid} for {file}")
            image = base / wnid / file
            if not image.is_file():
                raise UserError(f"{path}: image {image} not found; the imagenet-r images are missing or incomplete "
                                f"(a copy split into train/ and test/ folders reads with 'split: folders')")
            items.append((wnid, image))
        splits[split] = items
    both = {p for _, p in splits["train"]} & {p for _, p in splits["test"]}
    if both:
        raise UserError(f"{base}: {min(both)} is in both {SPLIT_FILES['train']} and {SPLIT_FILES['test']}; download the split files again")
    return splits


def _folder_splits(base: Path) -> dict[str, list[tuple[str, Path]]]:
    splits = {}
    for split in ("train", "test"):
        folder = base / split
        if not folder.is_dir():
            raise UserError(f"{folder}: folder missing; 'split: folders' reads imagenet-r/train/<wnid>/ and imagenet-r/test/<wnid>/")
        items = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            _check_wnid(sub.name, str(sub))
            items.extend((sub.name, image) for image in list_images(sub))
        if not items:
            raise UserError(f"{folder}: no images in class folders")
        splits[split] = items
    return splits


def build_imagenet_r(**options) -> Dataset:
    """ImageNet-R from ``<root>/imagenet-r`` split as ``split`` says (``ImageNetROptions`` keys); UserError for a
    missing folder, split file or image, or a class that is not ImageNet-R's."""
    opts = ImageNetROptions(**options)
    base = locate("imagenet_r", FOLDER, opts.root, opts.path, HINT)
    splits = _coda_splits(base) if opts.split == "coda" else _folder_splits(base)
    wnids = sorted({wnid for items in splits.values() for wnid, _ in items})
    label = {w: k for k, w in enumerate(wnids)}
    kwargs = {"workers": opts.workers} if opts.workers is not None else {}
    sets = {
        split: FileImageSet([str(p) for _, p in items], torch.tensor([label[w] for w, _ in items]), size=opts.image_size or 224, **kwargs)
        for split, items in splits.items()
    }
    names, templates = clip_names_and_templates()
    index = {w: i for i, w in enumerate(read_list("imagenet1k_wnids.txt"))}
    orders = {"pycil": numpy_permutation(200, PYCIL_SEED)} if len(wnids) == 200 else {}
    return Dataset(
        name="imagenet_r", class_names=[names[index[w]] for w in wnids], templates=list(templates),
        train=sets["train"], test=sets["test"], named_orders=orders,
    )


class ImageNetR(DatasetPlugin):
    """ImageNet-R's 200 classes, split by CODA-Prompt's files (or train/ and test/ folders); order pycil."""

    name = "imagenet_r"
    Options = ImageNetROptions
    input_size_option = "image_size"

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        return DatasetFacts(num_classes=200, num_templates=len(clip_names_and_templates()[1]), domains=())

    @classmethod
    def class_orders(cls, options: dict) -> tuple[str, ...]:
        return ("pycil",)

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_imagenet_r(**options)


@hookimpl
def clbench_add_datasets(register):
    register(ImageNetR)

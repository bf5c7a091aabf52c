"""torchvision: torchvision's image-classification datasets by name, in torchvision's own on-disk layouts.

``{dataset: torchvision, set: FGVCAircraft}`` reads ``<data root>/fgvc-aircraft-2013b``
exactly as ``torchvision.datasets.FGVCAircraft(root)`` would (``set`` and not ``name``:
a stream's ``name`` is its label). The data root holds torchvision's own folders, so
``root:`` may point at an existing torchvision (or ZSCL ``--data-location``) folder.
``download: true`` fetches what is missing through torchvision (its URLs and checksums).

The sets (MTIL's eleven, Zheng et al. ICCV 2023, plus CIFAR10), their folders and
splits are in ``SETS``. Each is parsed here, line for line as torchvision 0.29 parses
it (the function names the torchvision module), into paths for clbench's
``FileImageSet`` (decoded in worker processes at the model's size) or, for CIFAR and
MNIST, one uint8 tensor (``InMemoryImageSet``). Class ids are the dataset's own label
order (torchvision's ``classes``); ``raw_class_names`` are those names exactly.

Splits: ``train_split``/``test_split`` take torchvision's split names; the defaults are
ZSCL's MTIL code (Thunderbeee/ZSCL mtil/src/datasets/collections.py, as kept in
JiazuoYu/MoE-Adapters4CL mtil/src/datasets/collections.py): FGVCAircraft train/test,
DTD train/test (partition 1), Flowers102 train/test, Food101 train/test,
OxfordIIITPet trainval/test, StanfordCars train/test, MNIST and CIFAR train/test.
Caltech101, EuroSAT and SUN397 have no official split; ZSCL's ``split_dataset`` takes
``torch.utils.data.random_split(ds, [int(0.8 * n), n - int(0.8 * n)],
generator=torch.Generator().manual_seed(42))``, reproduced here (``split_seed: 42``,
``train_fraction: 0.8``): the first part of ``randperm(n)`` trains. Caltech101 and
EuroSAT list images in torchvision's order, so the images match ZSCL's split; SUN397's
torchvision order is ``Path.rglob``'s (the file system's), so clbench sorts the paths
first: reproducible everywhere, but not ZSCL's exact images.

CLIP class names and prompt templates follow clip_benchmark (LAION-AI/CLIP_benchmark,
PyPI ``clip_benchmark``, clip_benchmark/datasets/builder.py), read from the installed
package's ``en_classnames.json`` and ``en_zeroshot_classification_templates.json``
(``pip install --no-deps 'clip_benchmark>=1.6.2,<1.7'``: only the two JSON files are
read, clip_benchmark is never imported): its names for Caltech101 (without its
``background`` class, which torchvision drops), EuroSAT, Flowers102, MNIST and
OxfordIIITPet; torchvision's ``classes`` elsewhere, ``_`` (and SUN397's ``/``) made
spaces as clip_benchmark does for Food101 and SUN397 (and clbench's cifar100 does for
CIFAR-100, where clip_benchmark keeps ``aquarium_fish``).

Errors (``UserError``, one line): an unknown set (did-you-mean), a torchvision dataset
without CLIP names here (what to use instead), a split the set lacks, a missing or
incomplete copy (where it was looked for, ``download: true``), clip_benchmark missing.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import lazy_loader as lazy
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..errors import UserError
from ..facts import DatasetFacts
from .base import Dataset, InMemoryImageSet
from .files import FileImageSet, list_images
from .root import DATA_ENV, data_root, inside

torch = lazy.load("torch")  # imported on first use: validate and list never load it

CLIP_BENCHMARK = "clip_benchmark>=1.6.2,<1.7"
INSTALL = f"pip install --no-deps '{CLIP_BENCHMARK}'"


@dataclass(frozen=True)
class TorchvisionSet:
    """What clbench knows of one torchvision dataset without reading it."""

    folder: str  # torchvision's folder below the data root
    classes: int  # class count (FGVCAircraft: at annotation_level variant)
    splits: tuple[str, ...]  # torchvision's split names; () for none (a seeded split, as ZSCL's)
    default: tuple[Optional[str], Optional[str]]  # ZSCL's MTIL (train, test) splits
    templates: str  # key in clip_benchmark's templates
    names: Optional[str]  # key in clip_benchmark's class names; None: torchvision's classes, '_' -> ' '
    archive: str  # how to put it in place by hand (<root>: the data root)
    train_per_class: Optional[int] = None  # images per class of the default train split, where all classes have as many
    downloadable: bool = True  # torchvision can still fetch it

    def by_hand(self, root: Path) -> str:
        return self.archive.replace("<root>", str(root))


SETS: dict[str, TorchvisionSet] = {
    "Caltech101": TorchvisionSet("caltech101", 101, (), (None, None), "caltech101", "caltech101",
                                 "unpack 101_ObjectCategories.tar.gz (inside caltech-101.zip) into <root>/caltech101"),
    "CIFAR10": TorchvisionSet("cifar-10-batches-py", 10, ("train", "test"), ("train", "test"), "cifar10", None,
                              "unpack cifar-10-python.tar.gz into <root>", 5000),
    "CIFAR100": TorchvisionSet("cifar-100-python", 100, ("train", "test"), ("train", "test"), "cifar100", None,
                               "unpack cifar-100-python.tar.gz into <root>", 500),
    "DTD": TorchvisionSet("dtd", 47, ("train", "val", "test"), ("train", "test"), "dtd", None, "unpack dtd-r1.0.1.tar.gz into <root>/dtd"),
    "EuroSAT": TorchvisionSet("eurosat", 10, (), (None, None), "eurosat", "eurosat", "unzip EuroSAT.zip (RGB) into <root>/eurosat"),
    "FGVCAircraft": TorchvisionSet("fgvc-aircraft-2013b", 100, ("train", "val", "trainval", "test"), ("train", "test"),
                                   "fgvc_aircraft", None, "unpack fgvc-aircraft-2013b.tar.gz into <root>"),
    "Flowers102": TorchvisionSet("flowers-102", 102, ("train", "val", "test"), ("train", "test"), "flowers", "flowers",
                                 "unpack 102flowers.tgz and put imagelabels.mat and setid.mat into <root>/flowers-102"),
    "Food101": TorchvisionSet("food-101", 101, ("train", "test"), ("train", "test"), "food101", None, "unpack food-101.tar.gz into <root>", 750),
    "MNIST": TorchvisionSet("MNIST", 10, ("train", "test"), ("train", "test"), "mnist", "mnist",
                            "gunzip the four *-ubyte.gz files into <root>/MNIST/raw"),
    "OxfordIIITPet": TorchvisionSet("oxford-iiit-pet", 37, ("trainval", "test"), ("trainval", "test"), "pets", "pets",
                                    "unpack images.tar.gz and annotations.tar.gz into <root>/oxford-iiit-pet"),
    "StanfordCars": TorchvisionSet("stanford_cars", 196, ("train", "test"), ("train", "test"), "cars", None,
                                   "put devkit/, cars_train/, cars_test/ and cars_test_annos_withlabels.mat into <root>/stanford_cars "
                                   "(torchvision can no longer download it; copies are on Kaggle)", downloadable=False),
    "SUN397": TorchvisionSet("SUN397", 397, (), (None, None), "sun397", None, "unpack SUN397.tar.gz into <root>"),
}
AIRCRAFT_CLASSES = {"variant": 100, "family": 70, "manufacturer": 30}
#: torchvision's other image-classification datasets, and what to use for each instead
ELSEWHERE = {
    "ImageNet": "use 'dataset: imagenet1k' (CLIP's ImageNet names and 80 templates)",
    **{name: "use 'dataset: imagefolder' with your own 'templates:', or 'dataset: huggingface'" for name in (
        "Caltech256", "CelebA", "CLEVRClassification", "Country211", "EMNIST", "FashionMNIST", "FER2013", "GTSRB", "Imagenette",
        "INaturalist", "KMNIST", "LFWPeople", "LSUN", "Omniglot", "PCAM", "Places365", "QMNIST", "RenderedSST2", "SEMEION",
        "STL10", "SVHN", "USPS")},
}


def set_problem(name: str) -> Optional[str]:
    """Why ``name`` is no set of this plugin (one line), or None for a known set."""
    if name in SETS:
        return None
    known = ", ".join(SETS)
    if name in ELSEWHERE:
        return f"torchvision dataset '{name}' has no CLIP class names and templates in clbench; {ELSEWHERE[name]}; the torchvision sets are: {known}"
    by_lower = {n.lower(): n for n in [*SETS, *ELSEWHERE]}  # 'dtd' suggests 'DTD'
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f" (did you mean '{by_lower[close[0]]}'?)" if close else ""
    return f"unknown torchvision dataset '{name}'{hint}; known: {known}"


# --- CLIP names and templates (clip_benchmark) ----------------------------------

@functools.lru_cache(maxsize=1)
def clip_benchmark_lists() -> tuple[dict, dict]:
    """clip_benchmark's English (class names, zero-shot templates) JSON, read from the installed package.

    The package is located, never imported (its import pulls torch and transformers). Templates keep
    clip_benchmark's ``{c}``. Raises UserError with the pip command when it is not installed.
    """
    spec = importlib.util.find_spec("clip_benchmark")
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = [Path(f) / "datasets" / n for f in folders[:1] for n in ("en_classnames.json", "en_zeroshot_classification_templates.json")]
    if len(files) != 2 or not all(f.is_file() for f in files):
        raise UserError(f"dataset 'torchvision' reads CLIP class names and templates from clip_benchmark, which is not installed; {INSTALL}")
    names, templates = (json.loads(f.read_text(encoding="utf-8")) for f in files)
    return names, templates


def templates_of(set_name: str) -> list[str]:
    """clip_benchmark's prompt templates of a set, with ``{}`` for the class name. UserError without clip_benchmark."""
    return [t.replace("{c}", "{}") for t in clip_benchmark_lists()[1][SETS[set_name].templates]]


def clip_names(set_name: str, raw: list[str]) -> list[str]:
    """CLIP's names of a set's classes, given torchvision's ``raw`` names (rules in the module docstring)."""
    key = SETS[set_name].names
    if key is None:  # ZSCL's underline_to_space; clip_benchmark's SUN397 rule also drops '/' ('apartment building outdoor')
        return [n.replace("_", " ").replace("/", " ") if set_name == "SUN397" else n.replace("_", " ") for n in raw]
    names = list(clip_benchmark_lists()[0][key])
    return names[1:] if set_name == "Caltech101" else names  # clip_benchmark keeps Caltech's 'background' first


# --- options ----------------------------------------------------------------------

class TorchvisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    set: str  # torchvision's class name: FGVCAircraft, DTD, ...
    root: Optional[str] = None  # the data root holding torchvision's folders
    download: bool = False  # fetch a missing set through torchvision
    train_split: Optional[str] = None  # torchvision's split name; None: ZSCL's (SETS[...].default)
    test_split: Optional[str] = None
    partition: int = Field(1, ge=1, le=10)  # DTD's partition (labels/<split><partition>.txt)
    annotation_level: Literal["variant", "family", "manufacturer"] = "variant"  # FGVCAircraft's classes
    split_seed: int = 42  # Caltech101, EuroSAT, SUN397: ZSCL's seeded split
    train_fraction: float = Field(0.8, gt=0, lt=1)
    image_size: Optional[int] = Field(None, ge=8)  # decode size; default: the model's input size
    workers: Optional[int] = Field(None, ge=0)  # decoding processes; default min(8, CPUs)

    @field_validator("set")
    @classmethod
    def _known(cls, value: str) -> str:
        problem = set_problem(value)
        if problem:
            raise PydanticCustomError("torchvision_set", problem)
        return value

    @field_validator("train_split", "test_split")
    @classmethod
    def _split_of_the_set(cls, value: Optional[str], info) -> Optional[str]:
        name = info.data.get("set")
        if value is None or name not in SETS:
            return value
        splits = SETS[name].splits
        if not splits:
            raise PydanticCustomError("torchvision_split", f"{name} has no official splits; drop the key (a seeded split: split_seed, train_fraction)")
        if value not in splits:
            raise PydanticCustomError("torchvision_split", f"{name} has no split '{value}'; its splits: {', '.join(splits)}")
        return value

    @field_validator("partition", "annotation_level", "split_seed", "train_fraction")
    @classmethod
    def _applies(cls, value, info):
        owner = {"partition": ("DTD",), "annotation_level": ("FGVCAircraft",)}.get(info.field_name)
        owner = owner or tuple(n for n, s in SETS.items() if not s.splits)
        name = info.data.get("set")
        if name in SETS and name not in owner and value != cls.model_fields[info.field_name].default:
            raise PydanticCustomError("torchvision_option", f"applies to {' and '.join(owner)} only, not {name}; drop it")
        return value

    @model_validator(mode="after")
    def _two_splits(self) -> "TorchvisionOptions":
        train, test = _splits(self)
        if train is not None and train == test:
            raise PydanticCustomError("torchvision_split", f"train_split and test_split are both '{train}'; test on another split")
        return self


def _splits(opts: TorchvisionOptions) -> tuple[Optional[str], Optional[str]]:
    train, test = SETS[opts.set].default
    return opts.train_split or train, opts.test_split or test


# --- readers: one per set, as torchvision 0.29 parses it ---------------------------

class Missing(Exception):
    """A file or folder the set needs is not there (``path``)."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


def _need(path: Path, folder: bool = False) -> Path:
    if not (path.is_dir() if folder else path.is_file()):
        raise Missing(path)
    return path


def _files(paths: list[Path], where: Path) -> list[str]:
    """The paths as strings, after checking each exists (a partial copy is one line, not a failure mid-run)."""
    for p in paths:
        if not p.is_file():
            raise UserError(f"{where}: image {p} not found; the copy is incomplete, unpack the archive again or delete it and download again")
    return [str(p) for p in paths]


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in _need(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _aircraft(root: Path, split: str, opts) -> tuple:
    """torchvision/datasets/fgvc_aircraft.py: data/{variants,families,manufacturers}.txt, data/images_<level>_<split>.txt."""
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = _lines(data / {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}[opts.annotation_level])
    index = {c: i for i, c in enumerate(classes)}
    listing = data / f"images_{opts.annotation_level}_{split}.txt"
    paths, labels = [], []
    for n, line in enumerate(_lines(listing), 1):
        image, _, label = line.partition(" ")
        if label not in index:
            raise UserError(f"{listing}:{n}: class '{label}' is not in {data}/{opts.annotation_level}s.txt")
        paths.append(inside(data / "images", f"{image}.jpg", f"{listing}:{n}"))
        labels.append(index[label])
    return classes, _files(paths, listing), labels


def _caltech(root: Path, split, opts) -> tuple:
    """torchvision/datasets/caltech.py: sorted category folders minus BACKGROUND_Google, image_0001.jpg .. image_<n>.jpg each."""
    base = _need(root / "caltech101" / "101_ObjectCategories", folder=True)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")
    paths, labels = [], []
    for label, name in enumerate(classes):
        n = sum(1 for p in (base / name).iterdir() if not p.name.startswith("."))  # torchvision counts every entry; hidden ones skipped here
        paths += [base / name / f"image_{k:04d}.jpg" for k in range(1, n + 1)]
        labels += [label] * n
    return classes, _files(paths, base), labels


def _cifar(root: Path, split: str, opts) -> tuple:
    """torchvision/datasets/cifar.py: python pickles (read with clbench's restricted unpickler, clbench/data/cifar.py)."""
    from .cifar import read_pickle

    ten = opts.set == "CIFAR10"
    base = root / SETS[opts.set].folder
    files = (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"] if split == "train" else ["test_batch"]) \
        if ten else [split]
    meta = read_pickle(_need(base / ("batches.meta" if ten else "meta")))
    images, labels = [], []
    for name in files:
        batch = read_pickle(_need(base / name))
        try:
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(batch["labels" if ten else "fine_labels"])
        except (KeyError, ValueError) as exc:
            raise UserError(f"{base / name}: unexpected {opts.set} content ({exc}); delete it and download again") from None
    classes = list(meta.get("label_names" if ten else "fine_label_names") or [])
    return classes, torch.from_numpy(np.concatenate(images)), labels


def _dtd(root: Path, split: str, opts) -> tuple:
    """torchvision/datasets/dtd.py: dtd/dtd/labels/<split><partition>.txt lines '<class>/<file>', classes sorted."""
    data = root / "dtd" / "dtd"
    listing = data / "labels" / f"{split}{opts.partition}.txt"
    rel = _lines(listing)
    names = [line.split("/")[0] for line in rel]
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    paths = [inside(data / "images", line, f"{listing}:{n}") for n, line in enumerate(rel, 1)]
    return classes, _files(paths, listing), [index[c] for c in names]


def _eurosat(root: Path, split, opts) -> tuple:
    """torchvision/datasets/eurosat.py (an ImageFolder): eurosat/2750/<class>/*.jpg, classes and files sorted."""
    base = _need(root / "eurosat" / "2750", folder=True)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        images = list_images(base / name)
        paths += [str(p) for p in images]
        labels += [label] * len(images)
    return classes, paths, labels


def _flowers(root: Path, split: str, opts) -> tuple:
    """torchvision/datasets/flowers102.py: imagelabels.mat 'labels' (1-based), setid.mat trnid/valid/tstid, jpg/image_%05d.jpg."""
    from scipy.io import loadmat
    from torchvision.datasets import Flowers102

    base = root / "flowers-102"
    _need(base / "jpg", folder=True)
    ids = np.atleast_1d(loadmat(_need(base / "setid.mat"), squeeze_me=True)[{"train": "trnid", "val": "valid", "test": "tstid"}[split]])
    label_of = dict(enumerate((np.atleast_1d(loadmat(_need(base / "imagelabels.mat"), squeeze_me=True)["labels"]) - 1).tolist(), 1))
    paths = [base / "jpg" / f"image_{int(i):05d}.jpg" for i in ids]
    return list(Flowers102.classes), _files(paths, base / "setid.mat"), [label_of[int(i)] for i in ids]


def _food(root: Path, split: str, opts) -> tuple:
    """torchvision/datasets/food101.py: food-101/meta/<split>.json {class: ['<class>/<id>', ...]}, images/<id>.jpg."""
    base = root / "food-101"
    _need(base / "images", folder=True)
    listing = _need(base / "meta" / f"{split}.json")
    meta = json.loads(listing.read_text(encoding="utf-8"))
    classes = sorted(meta)
    paths, labels = [], []
    index = {c: i for i, c in enumerate(classes)}
    for name, images in meta.items():
        paths += [inside(base / "images", f"{rel}.jpg", str(listing)) for rel in images]
        labels += [index[name]] * len(images)
    return classes, _files(paths, listing), labels


def _mnist(root: Path, split: str, opts) -> tuple:
    """torchvision/datasets/mnist.py: MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or its legacy processed/*.pt)."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file

    base = root / "MNIST"
    legacy = [base / "processed" / name for name in ("training.pt", "test.pt")]
    try:
        if all(p.is_file() for p in legacy):
            images, labels = torch.load(legacy[split != "train"], weights_only=True)
        else:
            prefix = "train" if split == "train" else "t10k"
            images = read_image_file(str(_need(base / "raw" / f"{prefix}-images-idx3-ubyte")))
            labels = read_label_file(str(_need(base / "raw" / f"{prefix}-labels-idx1-ubyte")))
    except Missing:
        raise
    except Exception as exc:
        raise UserError(f"{base}: unreadable MNIST {split} files ({type(exc).__name__}: {exc}); delete them and download again") from None
    return list(MNIST.classes), images[:, None].expand(-1, 3, -1, -1).contiguous(), labels.tolist()


def _pets(root: Path, split: str, opts) -> tuple:
    """torchvision/datasets/oxford_iiit_pet.py: annotations/<split>.txt lines '<image id> <class 1..37> <species> <breed id>'."""
    base = root / "oxford-iiit-pet"
    _need(base / "images", folder=True)
    listing = base / "annotations" / f"{split}.txt"
    ids, labels = [], []
    for n, line in enumerate(_lines(listing), 1):
        parts = line.split()
        if len(parts) != 4 or not parts[1].isdigit():
            raise UserError(f"{listing}:{n}: malformed line '{line}'; expected '<image id> <class id> <species> <breed id>'")
        ids.append(parts[0])
        labels.append(int(parts[1]) - 1)
    pairs = sorted({(i.rsplit("_", 1)[0], label) for i, label in zip(ids, labels)}, key=lambda pair: pair[1])
    classes = [" ".join(part.title() for part in raw.split("_")) for raw, _ in pairs]
    paths = [inside(base / "images", f"{i}.jpg", f"{listing}") for i in ids]
    return classes, _files(paths, listing), labels


def _cars(root: Path, split: str, opts) -> tuple:
    """torchvision/datasets/stanford_cars.py: devkit/cars_meta.mat 'class_names'; annotations 'fname' and 'class' (1-based)."""
    from scipy.io import loadmat

    base = root / "stanford_cars"
    _need(base / "devkit", folder=True)
    annos = base / "devkit" / "cars_train_annos.mat" if split == "train" else base / "cars_test_annos_withlabels.mat"
    images = _need(base / f"cars_{split}", folder=True)
    records = np.atleast_1d(loadmat(_need(annos), squeeze_me=True)["annotations"])
    classes = [str(c) for c in np.atleast_1d(loadmat(_need(base / "devkit" / "cars_meta.mat"), squeeze_me=True)["class_names"])]
    paths = [inside(images, str(r["fname"]), str(annos)) for r in records]
    return classes, _files(paths, annos), [int(r["class"]) - 1 for r in records]


def _sun(root: Path, split, opts) -> tuple:
    """torchvision/datasets/sun397.py: ClassName.txt lines '/a/abbey', images <letter>/<class path>/sun_*.jpg (paths sorted here)."""
    base = _need(root / "SUN397", folder=True)
    classes = [line[3:].strip() for line in _lines(base / "ClassName.txt")]
    index = {c: i for i, c in enumerate(classes)}
    paths = sorted(base.rglob("sun_*.jpg"))
    labels = []
    for p in paths:
        name = "/".join(p.relative_to(base).parts[1:-1])
        if name not in index:
            raise UserError(f"{p}: class '{name}' is not in {base / 'ClassName.txt'}")
        labels.append(index[name])
    return classes, [str(p) for p in paths], labels


READERS = {"FGVCAircraft": _aircraft, "Caltech101": _caltech, "CIFAR10": _cifar, "CIFAR100": _cifar, "DTD": _dtd,
           "EuroSAT": _eurosat, "Flowers102": _flowers, "Food101": _food, "MNIST": _mnist, "OxfordIIITPet": _pets,
           "StanfordCars": _cars, "SUN397": _sun}


# --- building ---------------------------------------------------------------------

def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    try:
        getattr(tvd, name)(str(root), download=True)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise UserError(f"torchvision {name}: download into {root} failed ({type(exc).__name__}: {first}); {SETS[name].by_hand(root)}") from None


def _read(name: str, root: Path, split, opts: TorchvisionOptions) -> tuple:
    try:
        return READERS[name](root, split, opts)
    except Missing as missing:
        if not opts.download:
            spec = SETS[name]
            fetch = "set 'download: true' on the stream to fetch it through torchvision, or " if spec.downloadable else ""
            raise UserError(f"dataset 'torchvision' set {name} not found: missing {missing.path} (data root from stream 'root', "
                            f"${DATA_ENV} or ~/.cache/clbench/data); {fetch}{spec.by_hand(root)}") from None
    _download(name, root)
    try:
        return READERS[name](root, split, opts)
    except Missing as missing:
        raise UserError(f"torchvision {name}: {missing.path} still missing after the download into {root}; {SETS[name].by_hand(root)}") from None


def _image_set(data, labels: list[int], opts: TorchvisionOptions):
    labels = torch.as_tensor(labels, dtype=torch.long)
    if isinstance(data, list):
        kwargs = {"workers": opts.workers} if opts.workers is not None else {}
        return FileImageSet(data, labels, size=opts.image_size or 224, **kwargs)
    return InMemoryImageSet(data, labels)


def _take(data, labels: list[int], index: list[int]):
    picked = [data[i] for i in index] if isinstance(data, list) else data[torch.as_tensor(index, dtype=torch.long)]
    return picked, [labels[i] for i in index]


def build_torchvision(**options) -> Dataset:
    """One torchvision set (``TorchvisionOptions`` keys) as a clbench ``Dataset``.

    Train and test sets: FileImageSet of uint8 (3, image_size, image_size) decodes, or for CIFAR
    (3, 32, 32) and MNIST (3, 28, 28, grey repeated) an InMemoryImageSet; labels int64 in the set's
    own label order. UserError (one line) for a missing or incomplete copy, a failed download,
    class lists that do not match the set, or clip_benchmark not installed.
    """
    opts = TorchvisionOptions(**options)
    spec, root = SETS[opts.set], data_root(opts.root)
    templates = templates_of(opts.set)  # before any reading: a missing clip_benchmark is the first thing said
    train_split, test_split = _splits(opts)
    if spec.splits:
        raw, train_data, train_labels = _read(opts.set, root, train_split, opts)
        test_raw, test_data, test_labels = _read(opts.set, root, test_split, opts)
        if test_raw != raw:
            raise UserError(f"torchvision {opts.set} in {root}: the '{test_split}' split's classes differ from the '{train_split}' split's; the copy is incomplete")
    else:  # ZSCL's split_dataset: random_split(ds, [int(f * n), n - int(f * n)], generator=manual_seed(seed))
        raw, data, labels = _read(opts.set, root, None, opts)
        n = len(labels)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(opts.split_seed)).tolist()
        cut = int(opts.train_fraction * n)
        (train_data, train_labels), (test_data, test_labels) = _take(data, labels, sorted(order[:cut])), _take(data, labels, sorted(order[cut:]))
    expected = AIRCRAFT_CLASSES[opts.annotation_level] if opts.set == "FGVCAircraft" else spec.classes
    if len(raw) != expected:
        raise UserError(f"torchvision {opts.set} in {root / spec.folder}: {len(raw)} classes, expected {expected}; the copy is incomplete or not torchvision's layout")
    bad = next((label for label in [*train_labels, *test_labels] if not 0 <= label < expected), None)
    if bad is not None:
        raise UserError(f"torchvision {opts.set} in {root / spec.folder}: label {bad} outside 0..{expected - 1}")
    return Dataset(
        name=f"torchvision/{opts.set}", class_names=clip_names(opts.set, raw), templates=templates,
        train=_image_set(train_data, train_labels, opts), test=_image_set(test_data, test_labels, opts), raw_class_names=list(raw),
    )


class TorchvisionSets(DatasetPlugin):
    """torchvision's classification sets by name (set: FGVCAircraft, DTD, ...): MTIL's eleven and CIFAR10, CLIP names."""

    name = "torchvision"
    Options = TorchvisionOptions
    input_size_option = "image_size"
    offers_raw_names = True

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        spec = SETS[options["set"]]
        try:
            n_templates = len(clip_benchmark_lists()[1][spec.templates])
        except UserError:  # clip_benchmark missing: the cell says so when it builds the set
            n_templates = None
        default_train = options["train_split"] in (None, spec.default[0])
        classes = AIRCRAFT_CLASSES[options["annotation_level"]] if options["set"] == "FGVCAircraft" else spec.classes
        return DatasetFacts(num_classes=classes, num_templates=n_templates, domains=(),
                            train_per_class=spec.train_per_class if default_train else None)

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_torchvision(**options)


@hookimpl
def clbench_add_datasets(register):
    register(TorchvisionSets)

"""cub200: Caltech-UCSD Birds-200-2011, read through its own index files with the official train/test split.

Expected at ``<data root>/CUB_200_2011/`` (or the stream's ``path``), as CUB_200_2011.tgz unpacks::

    classes.txt               "<class id> <NNN.Name>"          1 001.Black_footed_Albatross
    images.txt                "<image id> <class folder>/<file>"  1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
    image_class_labels.txt    "<image id> <class id>"           1 1
    train_test_split.txt      "<image id> <1 train | 0 test>"   1 0
    images/<NNN.Name>/<file>.jpg

11,788 images of 200 species, 5,994 train / 5,794 test in the official split (the one
Continuum's ``CUB200`` and Avalanche's ``CUB200`` read). Class ids are the 1-based ids of
classes.txt minus one; a copy whose classes.txt lists fewer classes runs on those it lists.
Class names are classes.txt's cleaned (``001.Black_footed_Albatross`` -> "Black footed
Albatross"); raw names (``prompts: {class_names: raw}``) are the folder names as shipped.
Prompt: CLIP's bird template "a photo of a {}, a type of bird." (openai/CLIP data/prompts.md,
Birdsnap).

Class order ``pycil``: ``np.random.seed(1993); np.random.permutation(200)`` over the class ids,
the rule of APER and LAMDA-PILOT (zhoudw-zdw/RevisitingCIL exps/simplecil/cub_10_10_vit-b_simplecil.json:
``"shuffle": true, "seed": [1993]``; utils/data_manager.py ``_setup_data``) over ``ImageFolder``
ids, which are these ids when the class folders keep CUB's ``NNN.`` names. Their own copy is
split 80/20 rather than officially, so only the order carries over; offered with all 200 classes.
"""
from __future__ import annotations

from typing import Optional

import lazy_loader as lazy
from pydantic import BaseModel, ConfigDict, Field

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..errors import UserError
from ..facts import DatasetFacts
from .base import Dataset
from .files import FileImageSet
from .layout import id_table, locate
from .root import inside
from .scenarios import numpy_permutation

torch = lazy.load("torch")  # imported on first use: validate and list never load it

FOLDER = "CUB_200_2011"
HINT = "get CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/) and unpack it there"
TEMPLATES = ["a photo of a {}, a type of bird."]
PYCIL_SEED = 1993


class Cub200Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Optional[str] = None  # data root; the files are in <root>/CUB_200_2011
    path: Optional[str] = None  # the CUB_200_2011 folder itself (absolute, or below root), instead of root's
    image_size: Optional[int] = Field(None, ge=8)  # decode size; default: the model's input size
    workers: Optional[int] = Field(None, ge=0)  # decoding processes; default min(8, CPUs)


def clean_name(folder: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross`` (the id prefix dropped, underscores as spaces)."""
    head, dot, rest = folder.partition(".")
    name = rest if dot and head.isdigit() else folder
    return " ".join(name.replace("_", " ").split())


def _split_flag(value: str) -> int:
    if value not in ("0", "1"):
        raise ValueError(value)
    return int(value)


def build_cub200(**options) -> Dataset:
    """CUB-200-2011 from ``<root>/CUB_200_2011`` with its official split (``Cub200Options`` keys); UserError for a
    missing folder or file, a malformed line (file and line number), ids that disagree across files, or a missing image."""
    opts = Cub200Options(**options)
    base = locate("cub200", FOLDER, opts.root, opts.path, HINT)
    classes = id_table(base / "classes.txt", HINT)
    images = id_table(base / "images.txt", HINT)
    labels = id_table(base / "image_class_labels.txt", HINT, int)
    is_train = id_table(base / "train_test_split.txt", HINT, _split_flag)
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise UserError(f"{base / 'classes.txt'}: class ids must run 1..{len(class_ids)}")
    splits: dict[int, tuple[list[str], list[int]]] = {1: ([], []), 0: ([], [])}
    for image_id in sorted(images):
        rel = str(images[image_id])
        where = f"{base / 'images.txt'}: image {image_id}"
        if image_id not in labels or image_id not in is_train:
            missing = "image_class_labels.txt" if image_id not in labels else "train_test_split.txt"
            raise UserError(f"{where} has no line in {missing}; the index files disagree, unpack the archive again")
        label = labels[image_id]
        if "/" not in rel:
            raise UserError(f"{where}: path '{rel}' is not '<class folder>/<file>'")
        if label not in classes:
            raise UserError(f"{base / 'image_class_labels.txt'}: image {image_id} has class {label}, which classes.txt does not list")
        if rel.split("/")[0] != classes[label]:
            raise UserError(f"{where} is in folder '{rel.split('/')[0]}' but its class {label} is '{classes[label]}'")
        file = inside(base / "images", rel, where)
        if not file.is_file():
            raise UserError(f"{where}: {file} not found; the images are missing or incomplete")
        paths, ys = splits[is_train[image_id]]
        paths.append(str(file))
        ys.append(label - 1)
    for flag, split in ((1, "training"), (0, "test")):
        if not splits[flag][0]:
            raise UserError(f"{base / 'train_test_split.txt'}: no {split} images")
    kwargs = {"workers": opts.workers} if opts.workers is not None else {}
    train, test = (FileImageSet(splits[f][0], torch.tensor(splits[f][1]), size=opts.image_size or 224, **kwargs) for f in (1, 0))
    folders = [str(classes[k]) for k in class_ids]
    orders = {"pycil": numpy_permutation(200, PYCIL_SEED)} if len(folders) == 200 else {}
    return Dataset(
        name="cub200", class_names=[clean_name(f) for f in folders], templates=list(TEMPLATES),
        train=train, test=test, named_orders=orders, raw_class_names=folders,
    )


class Cub200(DatasetPlugin):
    """CUB-200-2011's 200 bird species with the official train/test split; order pycil."""

    name = "cub200"
    Options = Cub200Options
    input_size_option = "image_size"
    offers_raw_names = True

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        # images per class vary, so train_per_class stays unknown
        return DatasetFacts(num_classes=200, num_templates=len(TEMPLATES), domains=())

    @classmethod
    def class_orders(cls, options: dict) -> tuple[str, ...]:
        return ("pycil",)

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_cub200(**options)


@hookimpl
def clbench_add_datasets(register):
    register(Cub200)


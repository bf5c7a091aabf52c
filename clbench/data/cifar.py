"""cifar100: CIFAR-100 in torchvision's on-disk format (the python pickle version).

Expected at ``<data root>/cifar100/cifar-100-python/{train,test,meta}``;
``download: true`` fetches it there through torchvision (with its checksum).
The pickles are read with an unpickler that admits only numpy arrays and
builtin containers, so a tampered file cannot run code. All 60,000 images
stay in memory as one uint8 tensor (180 MB), the fast path.

Class names for prompts have spaces ("aquarium fish"); the raw names
("aquarium_fish", torchvision's ``classes``) are offered for protocols that
prompt with them. Class orders: ``seeded`` (default), ``icarl``, ``pycil``.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import lazy_loader as lazy
from pydantic import BaseModel, ConfigDict

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..errors import UserError
from ..facts import DatasetFacts
from .base import Dataset, InMemoryImageSet
from .root import data_root
from .scenarios import numpy_permutation

torch = lazy.load("torch")  # imported on first use: validate and list never load it

FOLDER = "cifar100"
#: ``class_order: icarl``: the order of iCaRL's original code (Rebuffi et al. 2017). Source:
#: arthurdouillard/incremental_learning.pytorch (PODNet) inclearn/lib/data/datasets.py, iCIFAR100.class_order
#: ("Taken from original iCaRL implementation"); Continual-CLIP loads it from class_orders/cifar100.yaml
#: (vgthengane/Continual-CLIP run_experiment.sh), the same list as JiazuoYu/MoE-Adapters4CL cil/class_orders/cifar100.yaml.
ICARL_ORDER = [
    87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86, 84, 96, 18, 24, 32,
    45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83, 17, 81, 41, 12, 37, 59, 25, 20, 80, 73,
    1, 28, 6, 46, 62, 82, 53, 9, 31, 75, 38, 63, 33, 74, 27, 22, 36, 3, 16, 21, 60, 19, 70, 90, 89,
    43, 5, 42, 65, 76, 40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99, 7, 34, 55, 54, 26, 35, 39,
]
#: ``class_order: pycil``: PyCIL's order, numpy's legacy permutation of the 100 labels under seed 1993 (68, 56, 78, ...).
#: Source: G-U-N/PyCIL utils/data_manager.py (_setup_data: np.random.seed(seed); np.random.permutation) with
#: utils/data.py iCIFAR100.class_order = arange(100) and exps/*.json ("shuffle": true, "seed": [1993]). Computed, not stored.
PYCIL_SEED = 1993
#: CLIP's prompt templates for CIFAR (Radford et al. 2021)
TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.", "a low contrast photo of a {}.",
    "a high contrast photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of a small {}.",
    "a photo of a big {}.", "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
]


class CifarOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Optional[str] = None  # data root; the files are in <root>/cifar100/cifar-100-python
    download: bool = False


class _SafeUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # protocol-2 pickles of bytes written by Python 3

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: not a readable CIFAR-100 pickle ({exc}); delete it and download again") from None


def _split(folder: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = read_pickle(folder / name)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = torch.as_tensor(batch["fine_labels"], dtype=torch.long)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{folder / name}: unexpected CIFAR-100 content ({exc}); delete it and download again") from None
    return torch.from_numpy(data.copy()), labels


def build_cifar100(**options) -> Dataset:
    """CIFAR-100 from ``<root>/cifar100/cifar-100-python`` (``CifarOptions`` keys); UserError when it is missing or unreadable."""
    opts = CifarOptions(**options)
    base = data_root(opts.root) / FOLDER
    folder = base / "cifar-100-python"
    if not (folder / "train").is_file() and opts.download:
        from torchvision.datasets import CIFAR100

        try:
            CIFAR100(str(base), train=True, download=True)
        except Exception as exc:
            raise UserError(f"cifar100: download into {base} failed ({exc}); fetch cifar-100-python.tar.gz by hand and unpack it there") from None
    for name in ("train", "test", "meta"):
        if not (folder / name).is_file():
            raise UserError(
                f"dataset 'cifar100' not found: missing {folder / name}; set 'download: true' on the stream, "
                f"or unpack cifar-100-python.tar.gz into {base}"
            )
    names = read_pickle(folder / "meta").get("fine_label_names")
    if not names or len(names) != 100:
        raise UserError(f"{folder / 'meta'}: expected 100 fine_label_names")
    train_x, train_y = _split(folder, "train")
    test_x, test_y = _split(folder, "test")
    return Dataset(
        name="cifar100",
        class_names=[n.replace("_", " ") for n in names],
        templates=list(TEMPLATES),
        train=InMemoryImageSet(train_x, train_y),
        test=InMemoryImageSet(test_x, test_y),
        named_orders={"icarl": list(ICARL_ORDER), "pycil": numpy_permutation(100, PYCIL_SEED)},
        raw_class_names=list(names),  # torchvision's fine_label_names, as Continual-CLIP prompts them
    )


class Cifar100(DatasetPlugin):
    """CIFAR-100 (torchvision's python format), held in memory; orders icarl and pycil."""

    name = "cifar100"
    Options = CifarOptions
    offers_raw_names = True

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        return DatasetFacts(num_classes=100, num_templates=len(TEMPLATES), domains=(), train_per_class=500)

    @classmethod
    def class_orders(cls, options: dict) -> tuple[str, ...]:
        return ("icarl", "pycil")  # named orders beside seeded, known without the data

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_cifar100(**options)


@hookimpl
def clbench_add_datasets(register):
    register(Cifar100)

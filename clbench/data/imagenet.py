"""imagenet1k and imagenet100: the ILSVRC-2012 folder layout, named the way CLIP names them.

Expected at ``<data root>/imagenet/{train,val}/<wnid>/*.JPEG`` (val sorted
into class folders, as most tools expect). Class ids follow the standard
order (sorted wnids); names and the 80 prompt templates are CLIP's, from
open_clip. ``imagenet100`` is the 100-class subset of PODNet and PyCIL
(the "seed 1993" list shipped in clbench/data/lists/), read from the same
tree; its canonical order for seed 1993 is the list's order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from clbench import hookimpl

from .base import Dataset
from .folders import scan_split
from .root import dataset_dir

LISTS = Path(__file__).parent / "lists"
FOLDER = "imagenet"
HINT = "get ILSVRC-2012 from image-net.org and lay it out as imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG"


def read_list(name: str) -> list[str]:
    return [line.strip() for line in (LISTS / name).read_text().splitlines() if line.strip()]


def clip_names_and_templates() -> tuple[list[str], list[str]]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return list(IMAGENET_CLASSNAMES), [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


class ImageNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Optional[str] = None
    image_size: Optional[int] = Field(None, ge=8)  # decode size; default: the model's input size
    workers: Optional[int] = Field(None, ge=0)  # decoding processes; default min(8, CPUs)


def _build(name: str, wnids: list[str], opts: ImageNetOptions, canonical: dict) -> Dataset:
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
        train=sets["train"], test=sets["val"], canonical_orders=canonical,
    )


def build_imagenet1k(**options) -> Dataset:
    return _build("imagenet1k", read_list("imagenet1k_wnids.txt"), ImageNetOptions(**options), {})


def build_imagenet100(**options) -> Dataset:
    wnids = read_list("imagenet100_wnids.txt")
    return _build("imagenet100", wnids, ImageNetOptions(**options), {1993: list(range(len(wnids)))})


build_imagenet1k.Options = ImageNetOptions
build_imagenet100.Options = ImageNetOptions
build_imagenet100.num_classes = lambda options: 100


@hookimpl
def clbench_add_datasets(register):
    register("imagenet1k", build_imagenet1k)
    register("imagenet100", build_imagenet100)

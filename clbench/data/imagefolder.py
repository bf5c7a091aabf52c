"""imagefolder: bring your own data as ``train/<class>/*`` and ``test/<class>/*``.

Class names come from folder names (underscores become spaces). With
``by_domain: true`` in the options the layout is ``<split>/<domain>/<class>/*``
and every domain must hold the same classes.

Where the folder is: ``path``, absolute or relative; with the universal
``root:`` key a relative ``path`` is below that data root (``root: /data``,
``path: birds`` reads ``/data/birds``), without it below the working folder.
``root`` and ``path`` only say where the data is: they never change a cell's id.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..errors import UserError
from ..facts import DatasetFacts
from .base import Dataset
from .folders import concat, scan_split


class ImageFolderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # the folder holding train/ and test/ (below ``root`` when that is given and path is relative)
    root: Optional[str] = None  # the data root a relative ``path`` is read from
    by_domain: bool = False  # <split>/<domain>/<class>/* instead of <split>/<class>/*
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."])
    image_size: Optional[int] = Field(None, ge=8)
    workers: Optional[int] = Field(None, ge=0)


def _subfolders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found; imagefolder expects train/ and test/ inside 'path'")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UserError(f"{folder}: no sub-folders; put one folder per class{' per domain' if 'domain' in str(folder) else ''}")
    return names


def build_imagefolder(**options) -> Dataset:
    """Your own class folders (``ImageFolderOptions`` keys); UserError for a missing folder, an empty one or a bad template."""
    opts = ImageFolderOptions(**options)
    root = Path(opts.path).expanduser()
    if opts.root and not root.is_absolute():
        root = Path(opts.root).expanduser() / root
    if not root.is_dir():
        raise UserError(f"imagefolder: path '{root}' not found; point 'path' (and 'root') at a folder holding train/ and test/")
    bad = next((t for t in opts.templates if t.count("{}") != 1), None)
    if bad is not None:
        raise UserError(f"imagefolder: template '{bad}' must contain '{{}}' exactly once")
    kw = {"size": opts.image_size, "workers": opts.workers}
    if opts.by_domain:
        domains = _subfolders(root / "train")
        classes = _subfolders(root / "train" / domains[0])
        splits = {
            split: concat([scan_split(root / split / d, classes, domain=i, **kw) for i, d in enumerate(domains)])
            for split in ("train", "test")
        }
    else:
        domains = None
        classes = _subfolders(root / "train")
        splits = {split: scan_split(root / split, classes, **kw) for split in ("train", "test")}
    return Dataset(
        name="imagefolder", class_names=[c.replace("_", " ") for c in classes], templates=list(opts.templates),
        train=splits["train"], test=splits["test"], domain_names=domains,
    )


class ImageFolder(DatasetPlugin):
    """Your own data as train/<class>/* and test/<class>/* (or per domain)."""

    name = "imagefolder"
    Options = ImageFolderOptions
    input_size_option = "image_size"

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        # classes and domains are folder names, read when the stream is built (the folder may live on another machine)
        return DatasetFacts(num_templates=len(options["templates"]), domains=None if options["by_domain"] else ())

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_imagefolder(**options)


@hookimpl
def clbench_add_datasets(register):
    register(ImageFolder)

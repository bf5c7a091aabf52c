"""Scanning class-per-folder trees (ImageNet's layout, and any image folder)."""
from __future__ import annotations

from pathlib import Path

import lazy_loader as lazy

from ..errors import UserError
from .files import FileImageSet, list_images

torch = lazy.load("torch")  # imported on first use: validate and list never load it


def scan_split(split_dir: Path, class_folders: list[str], size=None, workers=None,
               domain: int | None = None) -> FileImageSet:
    """Every image of ``split_dir/<class folder>/``; a class folder that is missing or empty is an error."""
    paths, labels = [], []
    for label, name in enumerate(class_folders):
        folder = split_dir / name
        if not folder.is_dir():
            raise UserError(f"{folder}: class folder missing; every class needs images in {split_dir}")
        images = list_images(folder)
        if not images:
            raise UserError(f"{folder}: class '{name}' has no images (looked for .jpg/.jpeg/.png/.bmp/.webp/.gif)")
        paths.extend(str(p) for p in images)
        labels.extend([label] * len(images))
    domains = None if domain is None else torch.full((len(labels),), domain, dtype=torch.long)
    kwargs = {"workers": workers} if workers is not None else {}
    return FileImageSet(paths, torch.tensor(labels, dtype=torch.long), domains, size=size or 224, **kwargs)


def concat(sets: list[FileImageSet]) -> FileImageSet:
    out = sets[0]
    for other in sets[1:]:
        out = out.concat(other)
    return out

"""Images stored as files: decoded with torchvision.io, in worker processes, at the model's size.

A FileImageSet keeps only paths and labels in memory. ``load`` decodes to
uint8, resizes the shorter side to the requested size and centre-crops it
(CLIP's preprocessing), so batches stack and the Learner only normalises.
"""
from __future__ import annotations

import os
from pathlib import Path

import lazy_loader as lazy

from ..errors import UserError
from .base import ImageSet, InMemoryImageSet, default_ids

torch = lazy.load("torch")  # imported on first use: validate and list never load it

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
DEFAULT_SIZE = 224


def _decode_fast(path: str) -> torch.Tensor | None:
    """torchvision's decoders for the common case: 8-bit images as uint8 (3, H, W); None for anything else."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 marks its decoders deprecated in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image, read_file

        try:
            image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        except Exception:  # a format torchvision lacks (BMP, TIFF, ...): Pillow's turn
            return None
    if image.dtype != torch.uint8 or image.ndim != 3:  # 16-bit pixels, animation frames: Pillow's turn
        return None
    return image


def _decode_pillow(path: str) -> torch.Tensor:
    """Pillow for every other kind: first frame; 16/32-bit integer pixels scaled to 8 bits (65535 -> 255);
    palette, grey, CMYK, alpha converted to RGB as CLIP's own preprocessing does (``convert("RGB")``,
    alpha dropped). ValueError for floating-point pixels, whose range is unknown."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im.seek(0)
        if im.mode == "F":
            raise ValueError("32-bit floating-point pixels have no fixed range; save the image with 8- or 16-bit pixels")
        if im.mode.startswith("I"):  # I;16, I;16B, I: integer grey levels of up to 16 bits
            wide = np.asarray(im, dtype=np.float64)
            if im.mode.startswith("I;16") or wide.max() > 255:
                wide = wide / 257.0
            grey = torch.from_numpy(np.clip(np.rint(wide), 0, 255).astype(np.uint8))
            return grey[None].expand(3, -1, -1).contiguous()
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def decode(path: str, size: int) -> torch.Tensor:
    """uint8 (3, size, size): shorter side resized to ``size`` (bicubic, antialiased), centre crop.

    Any image kind a folder may hold: 8-bit JPEG/PNG/WebP through torchvision;
    BMP, TIFF, animated GIF (first frame), 16-bit and palette images through
    Pillow, scaled to correct 8-bit RGB. Raises on an unreadable file.
    """
    image = _decode_fast(path)
    if image is None:
        image = _decode_pillow(path)
    return resize_crop(image, size)


def resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> (3, size, size): shorter side resized to ``size`` (bicubic, antialiased), centre crop."""
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        image = torch.nn.functional.interpolate(image[None].float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
        image = image.round().clamp(0, 255).to(torch.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[:, top : top + size, left : left + size].contiguous()


class _Decoder:  # a map-style dataset for torch's DataLoader (any object with __getitem__ and __len__)
    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return decode(self.paths[i], self.size), None
        except Exception as exc:  # reported in the main process as one line
            return None, f"{self.paths[i]}: {type(exc).__name__}: {exc}"


def _collate(items):
    bad = next((err for _, err in items if err), None)
    if bad:
        return None, bad
    return torch.stack([img for img, _ in items]), None


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


class FileImageSet(ImageSet):
    def __init__(self, paths: list[str], labels: torch.Tensor, domains: torch.Tensor | None = None,
                 size: int = DEFAULT_SIZE, workers: int | None = None, ids: torch.Tensor | None = None):
        if len(paths) != len(labels):
            raise ValueError("paths and labels must have the same length")
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.domains = None if domains is None else torch.as_tensor(domains, dtype=torch.long)
        self.size = size
        self.workers = default_workers() if workers is None else workers
        self.ids = default_ids(self.labels, ids)

    def subset(self, index: torch.Tensor) -> "FileImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        domains = None if self.domains is None else self.domains[index]
        return FileImageSet([self.paths[i] for i in index.tolist()], self.labels[index], domains, self.size, self.workers,
                            self.ids[index])

    def concat(self, other: "FileImageSet") -> "FileImageSet":
        from .decoded_cache import plain

        other = plain(other)  # a decoded (cached) set joins with the files it was decoded from
        domains = None if self.domains is None or other.domains is None else torch.cat([self.domains, other.domains])
        return FileImageSet(self.paths + other.paths, torch.cat([self.labels, other.labels]), domains, self.size, self.workers,
                            torch.cat([self.ids, other.ids]))

    def stored_bytes(self) -> int:
        """The encoded files: what a system keeping these exemplars on disk would hold."""
        return sum(os.path.getsize(p) for p in self.paths) + len(self) * 8

    def identity(self) -> str | None:
        """sha256 naming the pixels this set yields: decode size and, per file, its resolved path, size and mtime_ns
        (clbench/data/decoded_cache.py); None when a file cannot be stat'ed. Computed once per set."""
        if getattr(self, "_identity", None) is None:
            from .decoded_cache import file_identities, identity_key

            try:
                self._identity = identity_key("files", self.size, file_identities(self.paths))
            except OSError:
                return None
        return self._identity

    def state(self) -> dict:
        return {"kind": "files", "paths": list(self.paths), "labels": self.labels, "domains": self.domains,
                "size": self.size, "workers": self.workers, "ids": self.ids}

    def load(self, index: torch.Tensor) -> torch.Tensor:
        images, bad = _collate([_Decoder(self.paths, self.size)[i] for i in torch.as_tensor(index).tolist()])
        if bad:
            raise UserError(f"unreadable image {bad}; replace or remove the file")
        return images

    def batches(self, batch_size, shuffle=False, generator=None, with_ids=False):
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        decoder = _Decoder([self.paths[i] for i in order.tolist()], self.size)
        yield from decoded_batches(self, decoder, order, batch_size, with_ids, "unreadable image {}; replace or remove the file")


def decoded_batches(data: ImageSet, decoder, order: torch.Tensor, batch_size: int, with_ids: bool, unreadable: str,
                    collate=None):
    """(uint8 images, labels[, ids]) batches of ``data`` in ``order``, decoded by torch's DataLoader workers.

    ``decoder``: a map-style dataset whose item i decodes image ``order[i]`` as (image, bad name or
    None); ``collate``: stacks items into (images, the first bad name) (default: this module's);
    ``unreadable``: the one-line message, with ``{}`` for the bad name (raised as UserError).
    ``data.workers`` decode processes (0: in this process).
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(decoder, batch_size=batch_size, shuffle=False, num_workers=data.workers, collate_fn=collate or _collate,
                        pin_memory=torch.cuda.is_available(), persistent_workers=False,
                        prefetch_factor=4 if data.workers else None)
    for start, (images, bad) in zip(range(0, len(order), batch_size), loader):
        if bad:
            raise UserError(unreadable.format(bad))
        index = order[start : start + batch_size]
        yield (images, data.labels[index]) + ((data.ids[index],) if with_ids else ())


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder (by extension, any case; symlinks followed), sorted.

    Hidden files are skipped: what operating systems and tools leave beside images
    (macOS's ``._name.jpg`` resource forks, ``.DS_Store``) is never an image of the class.
    """
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def image_set_from_state(state: dict) -> ImageSet:
    """The image set a ``state()`` dict describes (an ``InMemoryImageSet`` or a ``FileImageSet``), for checkpoints.

    KeyError for a dict that no image set wrote.
    """
    if state["kind"] == "memory":
        return InMemoryImageSet(state["images"], state["labels"], state["domains"], state.get("ids"))
    if state["kind"] == "huggingface":
        from .hf_sets import HFImageSet

        return HFImageSet.from_state(state)
    if state["kind"] == "merged":
        from .sequence import MergedImageSet

        parts = [image_set_from_state(p) for p in state["parts"]]
        return MergedImageSet(parts, state["offsets"], state["part"], state["local"], state["size"], state["ids"])
    return FileImageSet(state["paths"], state["labels"], state["domains"], state["size"], state["workers"], state.get("ids"))

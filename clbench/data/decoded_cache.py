"""Decode once: a file-backed image set decoded a single time per machine into a compact uint8 file.

Image files (JPEG, PNG, a Hugging Face split's encoded bytes) are decoded, resized
and centre-cropped at the model's input size S every time a batch is loaded:
without this cache every evaluation of every step of every cell decodes its test
set again. ``cached_set`` wraps such a set in a ``DecodedImageSet`` that decodes
the whole set once, on first use, into ``<key>.u8`` (the raw uint8 array
(N, 3, S, S), row i = image i of the set) in ``cache_folder("decoded")``, and
from then on reads pixels from a memory map of that file: every later pass,
cell and process on the machine maps the same file.

Key: the set's ``identity()``, a sha256 over this format version, the decoders'
versions, the set's kind, S, and each image's identity (a file's resolved path,
size and mtime_ns; a Hugging Face split's fingerprint, files and row numbers), so
a changed file gives a new entry and never stale pixels.

Safety: an entry is decoded into ``<key>.tmp-<pid>``, fsynced, renamed to
``<key>.u8``, and only then is ``<key>.json`` (n, size, format) written: the
sidecar is the completion marker. A reader checks it against the file's size and
the expected shape; anything else is deleted and decoded again, never used. A
per-key ``flock`` on ``<key>.lock`` makes a second process wait for the first
one's decode and then map its file. Pixels are bit-identical to the source's,
so a record is the same with and without the cache.

Size policy: a set is cached when the decoded cache folder stays within
``CLBENCH_DECODE_CACHE_GB`` (default 100) with it, and its disk keeps 10 % free;
a set that does not fit (ImageNet's training split at 224 px, 193 GB) keeps
streaming through the decode workers. ``CLBENCH_CACHE_DIR=off`` turns it off.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import lazy_loader as lazy

from ..cache_dir import cache_folder
from ..errors import UserError
from ..locks import waiting_lock
from ..results import atomic_write_text
from .base import ImageSet, InMemoryImageSet

torch = lazy.load("torch")
np = lazy.load("numpy")

FORMAT = 1
LIMIT_ENV = "CLBENCH_DECODE_CACHE_GB"
DEFAULT_LIMIT_GB = 100.0
FREE_SHARE = 0.10  # of the cache disk left free, whatever the limit
BUILD_BATCH = 64  # images per batch while decoding an entry
MOVE_CHUNK = 1024  # images per host-to-device copy in ``to``


# --- keys ---------------------------------------------------------------------

def identity_key(kind: str, size: int, items: Iterable[str]) -> str:
    """The hex sha256 naming a set's pixels: format version, decoder versions, ``kind``, decode ``size`` and ``items``
    (one string per image or per piece of the set's identity, in order)."""
    import PIL
    import torchvision

    digest = hashlib.sha256(f"clbench-decoded|{FORMAT}|torch {torch.__version__}|torchvision {torchvision.__version__}|"
                            f"pillow {PIL.__version__}|{kind}|{int(size)}\n".encode())
    for item in items:
        digest.update(item.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def file_identities(paths: Iterable[str]) -> Iterable[str]:
    """Per file ``<resolved path>|<size>|<mtime_ns>|<inode>|<ctime_ns>``; OSError for a file that cannot be stat'ed.

    The inode and ctime catch a file replaced with one of the same size whose mtime was set back
    (``cp -p``, ``rsync -a``, unpacking an archive): no tool can set ctime.
    """
    folders: dict[str, str] = {}
    for path in paths:
        head, name = os.path.split(path)
        if head not in folders:
            folders[head] = os.path.realpath(head or ".")
        st = os.stat(path)
        yield f"{os.path.join(folders[head], name)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"


def sample_digest(path: Path, blocks: int = 256, block: int = 4096) -> str:
    """sha256 of ``blocks`` evenly spaced ``block``-byte pieces of a file (its first and last bytes included):
    a check of a cache entry cheap enough for every open (1 MB read), which catches an entry overwritten or
    zeroed in part, though not a change confined to bytes between the pieces."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for i in range(blocks):
            f.seek(max(0, min(size - block, (size - block) * i // max(1, blocks - 1))))
            digest.update(f.read(block))
    return digest.hexdigest()


def tensor_digest(values) -> str:
    """sha256 of an int64 tensor's values (row numbers, part indices) as one identity item."""
    return hashlib.sha256(torch.as_tensor(values, dtype=torch.long).contiguous().numpy().tobytes()).hexdigest()


# --- size policy --------------------------------------------------------------

def limit_bytes() -> int:
    """The most bytes the decoded cache folder may hold (``CLBENCH_DECODE_CACHE_GB``, GB of 10^9 bytes).

    UserError for a value that is no number >= 0.
    """
    value = os.environ.get(LIMIT_ENV, "").strip()
    try:
        gb = float(value) if value else DEFAULT_LIMIT_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise UserError(f"{LIMIT_ENV}={value!r}: give the decoded-image cache's size limit in GB (a number >= 0)")
    return int(gb * 1e9)


def has_room(folder: Path, need: int) -> bool:
    """Whether ``need`` more bytes fit in ``folder`` (an existing folder): the entries already there plus ``need``
    within ``limit_bytes()``, and the disk still 10 % free after writing them. OSError when the disk cannot be read."""
    used = sum(_size(p) for p in folder.glob("*.u8"))
    if used + need > limit_bytes():
        return False
    disk = shutil.disk_usage(folder)
    return disk.free - need >= FREE_SHARE * disk.total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # removed meanwhile by another process
        return 0


# --- one entry on disk ----------------------------------------------------------

class DecodedFile:
    """One cache entry: the uint8 array (n, 3, size, size) of ``source`` (row i = its image i), mapped on first use.

    ``array()`` decodes the entry first when it is missing or broken (waiting for another process doing
    so), and returns None when it cannot be kept (no room left, a folder that cannot be written): the
    views then stream from ``source`` as if uncached. Shared by every view (subset, where, concat) of it.
    """

    def __init__(self, folder: Path, key: str, source: ImageSet):
        self.folder, self.key, self.source = Path(folder), key, source
        self.n, self.size = len(source), int(source.size)
        self._array, self._opened = None, False

    @property
    def nbytes(self) -> int:
        return self.n * 3 * self.size * self.size

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.key}{suffix}"

    def array(self):
        """The read-only memory map (n, 3, size, size) uint8, or None: stream from the source instead."""
        if not self._opened:
            self._array = self._open_or_build()
            self._opened = True
        return self._array

    def __getstate__(self):  # a pickled view maps the file again where it lands, never ships the pixels
        return {**self.__dict__, "_array": None, "_opened": False}

    def _open_or_build(self):
        found = self._map()
        if found is not None:
            return found
        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # deleted since the set was wrapped: made again
            with waiting_lock(self.path(".lock")):
                found = self._map()  # another process may have finished it while this one waited
                if found is not None:
                    return found
                self._clear()
                if not has_room(self.folder, self.nbytes) or not self._build():
                    return None
                return self._map()
        except OSError:  # a cache disk that cannot be read or written: stream as if uncached
            return None

    def _map(self):
        """The memory map of a complete entry, or None (absent, unfinished, or not matching: never trusted)."""
        try:
            meta = json.loads(self.path(".json").read_text())
            complete = (meta.get("format") == FORMAT and meta.get("key") == self.key and meta.get("n") == self.n
                        and meta.get("size") == self.size and self.path(".u8").stat().st_size == self.nbytes
                        and meta.get("sample") == sample_digest(self.path(".u8")))
        except (OSError, ValueError, AttributeError):
            return None
        if not complete:
            return None
        return np.memmap(self.path(".u8"), dtype=np.uint8, mode="r", shape=(self.n, 3, self.size, self.size))

    def _clear(self) -> None:
        """Remove a broken entry and the leftovers of writers that died (called holding the lock)."""
        for stale in (self.path(".json"), self.path(".u8"), *self.folder.glob(f"{self.key}.tmp-*")):
            stale.unlink(missing_ok=True)

    def _build(self) -> bool:
        """Decode the source into the entry (holding the lock); False when the disk refused it.

        The source's own batches (its DataLoader decode workers), in order. An unreadable image
        raises the source's UserError; any failure leaves no file a reader would take as complete.
        """
        tmp, done = self.path(f".tmp-{os.getpid()}"), False
        try:
            with open(tmp, "wb") as out:
                written = 0
                for images, _labels in self.source.batches(BUILD_BATCH):
                    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, self.size, self.size):
                        raise ValueError(f"decoded batch of shape {tuple(images.shape)} {images.dtype}, expected (B, 3, {self.size}, {self.size}) uint8")
                    out.write(images.cpu().contiguous().numpy().data)
                    written += len(images)
                if written != self.n:
                    raise ValueError(f"the source gave {written} images, expected {self.n}")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path(".u8"))
            atomic_write_text(self.path(".json"), json.dumps({"format": FORMAT, "key": self.key, "n": self.n, "size": self.size,
                                              "bytes": self.nbytes, "sample": sample_digest(self.path(".u8"))}))
            _fsync_folder(self.folder)
            done = True
        except OSError:  # a full or read-only disk loses the entry, never the cell
            return False
        finally:
            tmp.unlink(missing_ok=True)
            if not done:
                self.path(".json").unlink(missing_ok=True)
                self.path(".u8").unlink(missing_ok=True)
        return True


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the image set ------------------------------------------------------------------

class DecodedImageSet(ImageSet):
    """Images of a decoded cache entry: ``rows`` (N,) int64 rows of ``file``, with their labels, domains and ids.

    ``load`` and ``batches`` give exactly the source's uint8 (B, 3, S, S) images; ``subset``, ``where``
    and ``concat`` (same entry) keep the mapping and copy no pixels. ``state``, ``stored_bytes`` and
    ``identity`` are the source's for these images, so checkpoints restore without the cache folder.
    ``pixels``: the images on a device after ``to`` (None: read from the mapped file).
    """

    def __init__(self, file: DecodedFile, rows, labels, domains=None, ids=None, pixels=None):
        self.file = file
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.domains = None if domains is None else torch.as_tensor(domains, dtype=torch.long)
        self.ids = torch.arange(len(self.rows)) if ids is None else torch.as_tensor(ids, dtype=torch.long)
        self.pixels = pixels
        self.size = file.size
        self._identity = None

    @classmethod
    def of(cls, file: DecodedFile) -> "DecodedImageSet":
        """Every image of the entry, with the source's labels, domains and ids."""
        source = file.source
        return cls(file, torch.arange(file.n), source.labels, source.domains, getattr(source, "ids", None))

    def _view(self, index: torch.Tensor, pixels=None) -> "DecodedImageSet":
        domains = None if self.domains is None else self.domains[index]
        return DecodedImageSet(self.file, self.rows[index], self.labels[index], domains, self.ids[index], pixels)

    def subset(self, index) -> "DecodedImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return self._view(index, None if self.pixels is None else self.pixels[index.to(self.pixels.device)])

    def load(self, index) -> torch.Tensor:
        """uint8 (len(index), 3, S, S): the mapped rows (a copy), on the device after ``to``."""
        index = torch.as_tensor(index, dtype=torch.long)
        if self.pixels is not None:
            return self.pixels[index.to(self.pixels.device)]
        array = self.file.array()
        if array is None:  # no room for the entry: decode as the source does
            return self.file.source.load(self.rows[index])
        return torch.from_numpy(array[self.rows[index].numpy()])

    def batches(self, batch_size, shuffle=False, generator=None, with_ids=False):
        """As ``ImageSet.batches`` (the same order for the same ``generator``); the source's own when uncached."""
        if self.pixels is None and self.file.array() is None:
            yield from self.source_view().batches(batch_size, shuffle, generator, with_ids)
            return
        yield from super().batches(batch_size, shuffle, generator, with_ids)

    def concat(self, other: ImageSet) -> ImageSet:
        """This set followed by ``other``: still decoded when ``other`` is of the same entry, else the sources joined."""
        if isinstance(other, DecodedImageSet) and other.file.key == self.file.key:
            domains = None if self.domains is None or other.domains is None else torch.cat([self.domains, other.domains])
            same = self.pixels is not None and other.pixels is not None and self.pixels.device == other.pixels.device
            return DecodedImageSet(self.file, torch.cat([self.rows, other.rows]), torch.cat([self.labels, other.labels]),
                                   domains, torch.cat([self.ids, other.ids]), torch.cat([self.pixels, other.pixels]) if same else None)
        return self.source_view().concat(plain(other))

    def source_view(self) -> ImageSet:
        """The source set's images of this set, with this set's ids (what ``state`` and ``stored_bytes`` describe)."""
        return self.file.source.subset(self.rows).with_ids(self.ids.clone())

    def stored_bytes(self) -> int:
        return self.source_view().stored_bytes()

    def state(self) -> dict:
        return self.source_view().state()

    def identity(self) -> str | None:
        """sha256 of the entry's key (the whole source's identity) and these rows: no file is stat'ed again."""
        if self._identity is None:
            digest = hashlib.sha256(f"decoded-rows|{self.file.key}|".encode())
            digest.update(self.rows.numpy().tobytes())
            self._identity = digest.hexdigest()
        return self._identity

    def pixel_bytes(self) -> int:
        """Bytes of these images' pixels (N * 3 * S * S), what ``to`` puts on a device."""
        return len(self) * 3 * self.size * self.size

    def to(self, device) -> "DecodedImageSet":
        """These images materialised on ``device`` (labels stay on the host); the host keeps the mapping."""
        device = torch.device(device)
        if device.type == "cpu" and self.pixels is None:
            return self
        if self.pixels is not None:
            pixels = self.pixels.to(device)
        else:
            pixels = torch.empty((len(self), 3, self.size, self.size), dtype=torch.uint8, device=device)
            for start in range(0, len(self), MOVE_CHUNK):
                pixels[start:start + MOVE_CHUNK] = self.load(torch.arange(start, min(start + MOVE_CHUNK, len(self)))).to(device)
        moved = self._view(torch.arange(len(self)), pixels)
        moved._identity = self._identity
        return moved


def plain(data: ImageSet) -> ImageSet:
    """``data`` itself, or for a decoded set the source's images it holds (to join it with a set of another kind)."""
    return data.source_view() if isinstance(data, DecodedImageSet) else data


# --- wrapping ---------------------------------------------------------------------

def _decodes(data: ImageSet) -> bool:
    """Whether ``data`` decodes its images on every load (files, encoded bytes), so caching them pays."""
    if isinstance(data, (InMemoryImageSet, DecodedImageSet)) or not hasattr(data, "size"):
        return False
    parts = getattr(data, "parts", None)  # a dataset sequence: only when every part decodes
    return parts is None or all(_decodes(p) for p in parts)


def cached_set(data: ImageSet) -> ImageSet:
    """``data`` as a ``DecodedImageSet`` (decoded on first use) when it decodes files, has an ``identity()``,
    and fits the size policy; else ``data`` unchanged (caching off, in memory already, too large, no key)."""
    folder = cache_folder("decoded")
    if folder is None or len(data) == 0 or not _decodes(data):
        return data
    need = len(data) * 3 * int(data.size) ** 2
    if need > limit_bytes():  # before any stat of its files: ImageNet's training split costs nothing here
        return data
    try:
        key = data.identity()  # None: unknown (a file that cannot be stat'ed streams, and fails as it always did)
    except OSError:
        return data
    if key is None:
        return data
    try:
        folder.mkdir(parents=True, exist_ok=True)
        done = (folder / f"{key}.u8").is_file()
        if not done and not has_room(folder, need):
            return data
    except OSError:
        return data
    return DecodedImageSet.of(DecodedFile(folder, key, data))


def cached_dataset(dataset):
    """``dataset`` with its train and test splits each wrapped by ``cached_set`` (ids kept exactly as they were)."""
    train, test = cached_set(dataset.train), cached_set(dataset.test)
    if train is dataset.train and test is dataset.test:
        return dataset
    from dataclasses import replace

    ids = dataset.train.ids.clone()
    out = replace(dataset, train=train, test=test)  # __post_init__ numbers the training images 0..N-1 again
    out.train.with_ids(ids)
    return out

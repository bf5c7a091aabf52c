"""huggingface: an image-classification dataset read with Hugging Face's ``datasets`` library.

Either a folder written by ``DatasetDict.save_to_disk`` (``path:``, absolute, or below
``root:`` when relative, like imagefolder's; where the data is, so not part of a cell's
id) or a Hub dataset (``hub: owner/name``, with ``hub_config`` and ``revision``; what
the data is, so part of the id), read with ``load_dataset``; offline
(``HF_HUB_OFFLINE=1``) only what the Hugging Face cache (``cache_dir``) already holds::

    streams:
      - {dataset: huggingface, path: /data/birds_hf, steps: 5, templates: ["a photo of a {}, a type of bird."]}
      - {dataset: huggingface, hub: my-lab/flowers, train_split: train, test_split: test}

Class names: the label column's ``ClassLabel`` names (``_`` made spaces; the raw names
are offered too), else the ``class_names`` option (labels then index it). Images: the
image column's ``Image`` feature, read undecoded (its stored bytes or path) and decoded
when a batch is loaded, in ``workers`` processes, as clbench decodes files
(clbench/data/files.py: torchvision for 8-bit JPEG/PNG/WebP, Pillow for the rest,
converted to RGB), the shorter side resized to the model's input size and centre-cropped:
uint8 (B, 3, image_size, image_size).

``datasets`` is optional (``pip install 'datasets>=2.19,<6'``) and imported only when a
stream is built: ``clbench validate`` stays instant. Every problem (the package missing,
a path or Hub dataset not found, a split, column or label that does not fit) is one
``UserError`` line naming the key.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import lazy_loader as lazy
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clbench import hookimpl

from ..dataset_plugin import RUNTIME_OPTIONS, DatasetPlugin
from ..errors import UserError
from ..facts import DatasetFacts
from .base import Dataset, ImageSet, default_ids
from .files import _decode_pillow, decode, decoded_batches, default_workers, resize_crop

torch = lazy.load("torch")  # imported on first use: validate and list never load it

DATASETS = "datasets>=2.19,<6"


class HuggingFaceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Optional[str] = None  # a folder written by save_to_disk (below root when relative)
    hub: Optional[str] = None  # or a Hub dataset, owner/name, read with load_dataset
    hub_config: Optional[str] = None  # the Hub dataset's configuration (load_dataset's name=)
    revision: Optional[str] = None  # the Hub dataset's revision (a commit, tag or branch)
    root: Optional[str] = None  # the data root a relative path is read from
    cache_dir: Optional[str] = None  # the Hugging Face datasets cache (default: theirs, ~/.cache/huggingface/datasets)
    train_split: str = "train"
    test_split: str = "test"
    image_column: str = "image"
    label_column: str = "label"
    class_names: Optional[list[str]] = None  # when the label column is no ClassLabel; labels index this list
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."])
    image_size: Optional[int] = Field(None, ge=8)  # decode size; default: the model's input size
    workers: Optional[int] = Field(None, ge=0)  # decoding processes; default min(8, CPUs)

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, value: list[str]) -> list[str]:
        bad = next((t for t in value if t.count("{}") != 1), None)
        if not value or bad is not None:
            raise ValueError(f"each template needs '{{}}' exactly once (got {bad!r})" if value else "give at least one template")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "HuggingFaceOptions":
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of 'path' (a save_to_disk folder) and 'hub' (a Hub dataset name)")
        if self.hub is None and (self.hub_config or self.revision):
            raise ValueError("'hub_config' and 'revision' apply to a 'hub' dataset only")
        return self


# --- the image set --------------------------------------------------------------

def decode_record(record: dict, size: int) -> torch.Tensor:
    """One undecoded ``Image`` value (``{"bytes": ..., "path": ...}``) as uint8 (3, size, size), RGB."""
    if record.get("bytes") is None:
        return decode(record["path"], size)
    data = bytes(record["bytes"])
    image = None
    try:
        from torchvision.io import ImageReadMode, decode_image

        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        image = image if image.dtype == torch.uint8 and image.ndim == 3 else None
    except Exception:  # a format torchvision lacks: Pillow's turn
        image = None
    return resize_crop(image if image is not None else _decode_pillow(io.BytesIO(data)), size)


class _Rows:  # a map-style dataset for torch's DataLoader: decodes one row per item, errors reported as one line
    def __init__(self, table, column: str, rows: list[int], size: int):
        self.table, self.column, self.rows, self.size = table, column, rows, size

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        try:
            return decode_record(self.table[self.rows[i]][self.column], self.size), None
        except Exception as exc:
            return None, f"row {self.rows[i]} of column '{self.column}': {type(exc).__name__}: {exc}"


def _collate(items):
    bad = next((err for _, err in items if err), None)
    return (None, bad) if bad else (torch.stack([img for img, _ in items]), None)


class HFImageSet(ImageSet):
    """Rows of one split of a ``datasets`` dataset, decoded on load: uint8 (B, 3, size, size).

    ``table``: the split with only its image column, undecoded (``Image(decode=False)``);
    ``source``: how to open it again (``state``); ``rows``: int64 (N,) row numbers in the split.
    """

    def __init__(self, table, source: dict, rows, labels, size: int = 224, workers: Optional[int] = None, ids=None):
        self.table, self.source = table, dict(source)
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        if len(self.rows) != len(self.labels):
            raise ValueError("rows and labels must have the same length")
        self.domains = None
        self.size = int(size)
        self.workers = default_workers() if workers is None else workers
        self.ids = default_ids(self.labels, ids)

    def subset(self, index) -> "HFImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return HFImageSet(self.table, self.source, self.rows[index], self.labels[index], self.size, self.workers, self.ids[index])

    def concat(self, other: "HFImageSet") -> "HFImageSet":
        from .decoded_cache import plain

        other = plain(other)  # a decoded (cached) set joins with the rows it was decoded from
        if not isinstance(other, HFImageSet) or other.source != self.source:
            raise ValueError("only rows of the same Hugging Face split can be joined")
        return HFImageSet(self.table, self.source, torch.cat([self.rows, other.rows]), torch.cat([self.labels, other.labels]),
                          self.size, self.workers, torch.cat([self.ids, other.ids]))

    def stored_bytes(self) -> int:
        """The encoded images as stored (bytes, or the files they name), plus labels."""
        import os

        total = 0
        for record in self.table[self.rows.tolist()][self.source["column"]] if len(self) else []:
            total += len(record["bytes"]) if record.get("bytes") is not None else os.path.getsize(record["path"])
        return total + len(self) * 8

    def identity(self) -> str | None:
        """sha256 naming the pixels this set yields (clbench/data/decoded_cache.py): decode size, which split and
        column of which dataset, the table's ``datasets`` fingerprint, its Arrow files (resolved path, size,
        mtime_ns) and the row numbers. None without a fingerprint or when a file cannot be stat'ed. Images
        stored as paths to files outside the Arrow files are named by their paths only."""
        if getattr(self, "_identity", None) is None:
            import json

            from .decoded_cache import file_identities, identity_key, tensor_digest

            fingerprint = getattr(self.table, "_fingerprint", None)
            if fingerprint is None:
                return None
            what = json.dumps({k: self.source.get(k) for k in ("hub", "hub_config", "revision", "split", "column")}, sort_keys=True)
            try:
                files = list(file_identities(f["filename"] for f in self.table.cache_files))
            except OSError:
                return None
            items = [what, f"fingerprint {fingerprint}", *files, f"rows {tensor_digest(self.rows)}"]
            self._identity = identity_key("huggingface", self.size, items)
        return self._identity

    def state(self) -> dict:
        return {"kind": "huggingface", "source": dict(self.source), "rows": self.rows, "labels": self.labels, "size": self.size,
                "workers": self.workers, "ids": self.ids}

    @classmethod
    def from_state(cls, state: dict) -> "HFImageSet":
        """The set a ``state()`` dict describes, its split opened again from ``source``."""
        source = state["source"]
        return cls(_open_split(source), source, state["rows"], state["labels"], state["size"], state["workers"], state["ids"])

    def load(self, index) -> torch.Tensor:
        rows = _Rows(self.table, self.source["column"], self.rows[torch.as_tensor(index, dtype=torch.long)].tolist(), self.size)
        images, bad = _collate([rows[i] for i in range(len(rows))])
        if bad:
            raise UserError(f"huggingface {self.source['name']}: unreadable image in {bad}")
        return images

    def batches(self, batch_size, shuffle=False, generator=None, with_ids=False):

        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        rows = _Rows(self.table, self.source["column"], self.rows[order].tolist(), self.size)
        name = str(self.source["name"]).replace("{", "{{").replace("}", "}}")
        yield from decoded_batches(self, rows, order, batch_size, with_ids, f"huggingface {name}: unreadable image in {{}}", _collate)


# --- opening the data -------------------------------------------------------------

def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError(f"dataset 'huggingface' needs the datasets package, which is not installed; pip install '{DATASETS}'") from None
    return datasets


def _open(source: dict):
    """The DatasetDict ``source`` names (a save_to_disk folder, or a Hub dataset from the cache when offline)."""
    datasets = _datasets()
    if source["path"] is not None:
        folder = Path(source["path"])
        if not folder.is_dir():
            raise UserError(f"huggingface: path '{folder}' not found; point 'path' (and 'root') at a folder written by DatasetDict.save_to_disk")
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as exc:
            raise UserError(f"huggingface: path '{folder}' is not a saved dataset ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                            "write it with DatasetDict.save_to_disk") from None
        if not isinstance(loaded, datasets.DatasetDict):
            raise UserError(f"huggingface: path '{folder}' holds one split, not a DatasetDict; save DatasetDict(train=..., test=...) there")
        return loaded
    try:
        return datasets.load_dataset(source["hub"], source["hub_config"], revision=source["revision"], cache_dir=source["cache_dir"])
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UserError(f"huggingface: hub dataset '{source['hub']}' could not be loaded ({type(exc).__name__}: {first}); offline "
                        "(HF_HUB_OFFLINE=1) only datasets already in the Hugging Face cache load: load it once online, or "
                        "save_to_disk a copy and give its folder as 'path'") from None


def _open_split(source: dict):
    """One split's image column, undecoded, of ``source`` (for ``HFImageSet.from_state``)."""
    datasets = _datasets()
    split = _open(source)[source["split"]]
    return split.select_columns([source["column"]]).cast_column(source["column"], datasets.Image(decode=False))


def _split(data, opts: HuggingFaceOptions, key: str, name: str, source: dict):
    """(undecoded image table, labels list, raw class names or None) of one split; UserError naming the key."""
    datasets = _datasets()
    split = getattr(opts, key)
    if split not in data:
        raise UserError(f"huggingface {name}: {key}: no split '{split}'; its splits: {', '.join(data)}")
    table = data[split]
    for col_key in ("image_column", "label_column"):
        column = getattr(opts, col_key)
        if column not in table.column_names:
            raise UserError(f"huggingface {name}: {col_key}: no column '{column}' in split '{split}'; its columns: {', '.join(table.column_names)}")
    image = table.features[opts.image_column]
    if not isinstance(image, datasets.Image):
        raise UserError(f"huggingface {name}: image_column: column '{opts.image_column}' is {type(image).__name__}, not an Image feature")
    label = table.features[opts.label_column]
    names = list(label.names) if isinstance(label, datasets.ClassLabel) else None
    if names is None and opts.class_names is None:
        raise UserError(f"huggingface {name}: label_column: column '{opts.label_column}' is {type(label).__name__}, not a ClassLabel; "
                        "give the class names as 'class_names' (labels index that list) or cast the column to ClassLabel")
    labels = table.with_format("arrow")[:][opts.label_column].to_pylist()  # respects a selection's row order
    images = table.select_columns([opts.image_column]).cast_column(opts.image_column, datasets.Image(decode=False))
    return images, labels, names, dict(source, split=split)


def build_huggingface(**options) -> Dataset:
    """A ``datasets`` image-classification dataset (``HuggingFaceOptions`` keys) as a clbench ``Dataset``.

    Train and test sets are ``HFImageSet`` (uint8 (B, 3, image_size, image_size) batches), labels
    int64 in the label column's order. UserError (one line) for the package missing, a path or Hub
    dataset not found, a missing split or column, a label column that is no ClassLabel without
    ``class_names``, class lists that differ between the splits, or a label outside the classes.
    """
    opts = HuggingFaceOptions(**options)
    path = None
    if opts.path is not None:
        path = Path(opts.path).expanduser()
        if opts.root and not path.is_absolute():
            path = Path(opts.root).expanduser() / path
    name = str(path) if path is not None else opts.hub
    source = {"name": name, "path": None if path is None else str(path), "hub": opts.hub, "hub_config": opts.hub_config,
              "revision": opts.revision, "cache_dir": opts.cache_dir, "column": opts.image_column}
    data = _open(source)
    train_images, train_labels, names, train_source = _split(data, opts, "train_split", name, source)
    test_images, test_labels, test_names, test_source = _split(data, opts, "test_split", name, source)
    if names != test_names:
        raise UserError(f"huggingface {name}: label_column: the ClassLabel names of '{opts.train_split}' and '{opts.test_split}' differ")
    if names is not None and opts.class_names is not None and len(names) != len(opts.class_names):
        raise UserError(f"huggingface {name}: class_names: {len(opts.class_names)} names, but column '{opts.label_column}' has {len(names)} classes")
    raw = list(opts.class_names) if opts.class_names is not None else names
    for split, labels in ((opts.train_split, train_labels), (opts.test_split, test_labels)):
        bad = next((v for v in labels if not isinstance(v, int) or not 0 <= v < len(raw)), None)
        if bad is not None or not labels:
            what = f"label {bad!r} outside 0..{len(raw) - 1}" if labels else "no rows"
            raise UserError(f"huggingface {name}: label_column: split '{split}' has {what}; labels must index the {len(raw)} class names")
    size, workers = opts.image_size or 224, opts.workers
    return Dataset(
        name=f"huggingface/{name}", class_names=[n.replace("_", " ") for n in raw], templates=list(opts.templates),
        train=HFImageSet(train_images, train_source, list(range(len(train_labels))), train_labels, size, workers),
        test=HFImageSet(test_images, test_source, list(range(len(test_labels))), test_labels, size, workers),
        raw_class_names=list(raw),
    )


class HuggingFace(DatasetPlugin):
    """A Hugging Face datasets image-classification dataset (a save_to_disk folder or a Hub name), ClassLabel names."""

    name = "huggingface"
    Options = HuggingFaceOptions
    runtime_options = (*RUNTIME_OPTIONS, "cache_dir")
    input_size_option = "image_size"
    offers_raw_names = True

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        names = options.get("class_names")
        return DatasetFacts(num_classes=len(names) if names else None, num_templates=len(options["templates"]), domains=())

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_huggingface(**options)


@hookimpl
def clbench_add_datasets(register):
    register(HuggingFace)

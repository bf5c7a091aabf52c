"""domainnet: DomainNet's six domains and 345 classes, from its official split files.

Expected at ``<data root>/domainnet/`` holding ``{domain}_train.txt`` and
``{domain}_test.txt`` (lines like ``clipart/aircraft_carrier/clipart_001_000018.jpg 0``)
and the image folders they name. ``download: true`` fetches the missing
archives and split files from the official site (cleaned version) and
checks each against its published SHA-512 prefix before use.
"""
from __future__ import annotations

import hashlib
import urllib.request
import zipfile
from pathlib import Path
from typing import Literal, Optional

import lazy_loader as lazy
from pydantic import BaseModel, ConfigDict, Field

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..errors import UserError
from ..facts import DatasetFacts
from .base import Dataset
from .files import FileImageSet
from .folders import concat
from .root import data_root, inside

torch = lazy.load("torch")  # imported on first use: validate and list never load it

FOLDER = "domainnet"
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
BASE_URL = "http://csr.bu.edu/ftp/visda/2019/multi-source"
ARCHIVES = {  # url path, sha512 prefix
    "clipart": ("groundtruth/clipart.zip", "3bcfb9ec1b4061e8d5b0b887d4ebd4a708732787fc563c6dfc2d"),
    "infograph": ("infograph.zip", "47841f0d1b8606e4b02d508b250484d54f5cf04ef6c4875c6c5a39c"),
    "painting": ("groundtruth/painting.zip", "4c98b02563075948668a298c488660fda1d1a7ed85fd69caa7985fba"),
    "quickdraw": ("quickdraw.zip", "127cce1dd57fc99992f8614de77d03ae8ed6af242973f7a013ec0a"),
    "real": ("real.zip", "751713d4592d1278b50bf69787988cfae280cabdac80ee34ec4016e"),
    "sketch": ("sketch.zip", "369b8b6d78ac61bfcc85f660d878ba5fc701524b82bbc2eb65ca9a"),
}
SPLIT_FILES = {
    "clipart_train": "400985ce2a0878df2d8e54f1996c4fc253e577c1f91136304e553b",
    "clipart_test": "4d34a4a540d8b139499581875e2d18bbedd37c347233523d66beaf",
    "infograph_train": "d9ed4d86e2ea20b44315699964b6b7dc09442f0539300444d9329d",
    "infograph_test": "700f2b5deaad3923b0b8b85aeb694b73f24b13255cf48db3e770eaf",
    "painting_train": None,  # no published checksum
    "painting_test": None,
    "quickdraw_train": "7410e8a1debd769e0412725a0fcc646d83055d297b5f44a92f50308",
    "quickdraw_test": "07a97e84d723f58dea67683ae5ddf013ebc5d33b76deca9a5d34f72",
    "real_train": "a5a510fec614018546510d55c378bca008fcfd51062f6414583639e",
    "real_test": "9586235e335340f065de720f99332bc906aa0ab147006a1a7ea4925",
    "sketch_train": "ee92102f2b98f11765e6a97afbab15c60f2bac6e30fa7e1bc5a7db",
    "sketch_test": "7384fc06670979911d7e1e9a34ba8a6cd20e9e77d6bc3536c739ff4",
}
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "a painting of a {}.", "a sketch of a {}.", "an image of a {}."]


class DomainNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Optional[str] = None
    download: bool = False
    # which domains to read (all six by default); the stream's 'domains' key then picks and orders them
    load_domains: list[Literal["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]] = list(DOMAINS)
    image_size: Optional[int] = Field(None, ge=8)
    workers: Optional[int] = Field(None, ge=0)


def verify_sha512_prefix(path: Path, prefix: str | None) -> None:
    """Raise (and delete the file) when its SHA-512 does not start with the published prefix."""
    if prefix is None:
        return
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(prefix):
        path.unlink(missing_ok=True)
        raise UserError(f"{path}: checksum mismatch (SHA-512 should start {prefix[:16]}…); the file was removed, download it again")


def _fetch(url: str, target: Path, prefix: str | None) -> None:
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"domainnet: could not download {url} ({exc}); fetch it by hand into {target.parent}") from None
    verify_sha512_prefix(tmp, prefix)
    tmp.replace(target)


def download(base: Path, domains) -> None:
    base.mkdir(parents=True, exist_ok=True)
    for domain in domains:
        for split in ("train", "test"):
            name = f"{domain}_{split}"
            if not (base / f"{name}.txt").is_file():
                _fetch(f"{BASE_URL}/domainnet/txt/{name}.txt", base / f"{name}.txt", SPLIT_FILES[name])
        if not (base / domain).is_dir():
            rel, prefix = ARCHIVES[domain]
            archive = base / f"{domain}.zip"
            _fetch(f"{BASE_URL}/{rel}", archive, prefix)
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    inside(base, member, str(archive))  # refuse archive members that escape the folder
                z.extractall(base)
            archive.unlink()


def read_split(base: Path, domain: str, split: str, class_names: dict[int, str]) -> tuple[list[str], list[int]]:
    """Paths and labels of one split file; names each class from its folder and checks they agree."""
    path = base / f"{domain}_{split}.txt"
    if not path.is_file():
        raise UserError(f"{path}: split file missing; set 'download: true' or get it from {BASE_URL}/domainnet/txt/{path.name}")
    paths, labels = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) != 2 or not parts[1].isdigit():
            raise UserError(f"{where}: malformed line '{line.strip()}'; expected '<domain>/<class>/<file> <label>'")
        rel, label = parts[0], int(parts[1])
        pieces = rel.split("/")
        if len(pieces) != 3 or pieces[0] != domain:
            raise UserError(f"{where}: path '{rel}' is not '{domain}/<class>/<file>'")
        image = inside(base, rel, where)
        if not image.is_file():
            raise UserError(f"{where}: image {image} not found; the '{domain}' images are missing or incomplete")
        if class_names.setdefault(label, pieces[1]) != pieces[1]:
            raise UserError(f"{where}: label {label} is '{class_names[label]}' elsewhere but '{pieces[1]}' here")
        paths.append(str(image))
        labels.append(label)
    if not paths:
        raise UserError(f"{path}: no images listed")
    return paths, labels


def build_domainnet(**options) -> Dataset:
    """DomainNet from ``<root>/domainnet`` (``DomainNetOptions`` keys); UserError for missing or malformed files."""
    opts = DomainNetOptions(**options)
    base = data_root(opts.root) / FOLDER
    domains = [d for d in DOMAINS if d in opts.load_domains]
    if opts.download:
        download(base, domains)
    if not base.is_dir():
        raise UserError(f"dataset 'domainnet' not found at {base}; set 'download: true' on the stream or get it from http://ai.bu.edu/M3SDA/")
    class_names: dict[int, str] = {}
    splits = {"train": [], "test": []}
    for d, domain in enumerate(domains):
        for split in splits:
            paths, labels = read_split(base, domain, split, class_names)
            kwargs = {"workers": opts.workers} if opts.workers is not None else {}
            splits[split].append(FileImageSet(paths, torch.tensor(labels), torch.full((len(labels),), d), size=opts.image_size or 224, **kwargs))
    n = max(class_names) + 1
    missing = [k for k in range(n) if k not in class_names]
    if missing:
        raise UserError(f"{base}: label {missing[0]} never appears in the split files; labels must run 0..{n - 1}")
    return Dataset(
        name="domainnet", class_names=[class_names[k].replace("_", " ") for k in range(n)], templates=list(TEMPLATES),
        train=concat(splits["train"]), test=concat(splits["test"]), domain_names=domains,
    )


class DomainNet(DatasetPlugin):
    """DomainNet's six domains and 345 classes, from its official split files."""

    name = "domainnet"
    Options = DomainNetOptions
    input_size_option = "image_size"

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        # the class count is read from the split files (a partial copy has fewer); the domains are the loaded ones, in DOMAINS order
        return DatasetFacts(num_templates=len(TEMPLATES), domains=tuple(d for d in DOMAINS if d in options.get("load_domains", DOMAINS)))

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_domainnet(**options)


@hookimpl
def clbench_add_datasets(register):
    register(DomainNet)

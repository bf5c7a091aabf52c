"""core50: CORe50 as a domain-incremental stream, its eleven recording sessions as domains (the NI protocol).

Expected at ``<data root>/core50_128x128/`` (or the stream's ``path``), as core50_128x128.zip unpacks::

    core50_128x128/s<k>/o<j>/C_<kk>_<jj>_<fff>.png    e.g. s11/o1/C_11_01_000.png; k = 1..11 sessions,
                                                       j = 1..50 objects, ~300 frames of one video each

Protocol: CORe50's NI ("new instances") scenario (Lomonaco & Maltoni, CoRL 2017): sessions 3, 7
and 10 are the fixed test set; the other eight (s1, s2, s4, s5, s6, s8, s9, s11) are trained on,
one experience each, all classes in each. Avalanche's ``CORe50(scenario="ni")`` (8 training
batches, one ``test_filelist.txt``, ``complete_test_set_only=True``) and Continuum's ``Core50``
("3 background environments are allocated for test") follow it, as do L2P's and S-Prompts'
domain-incremental CORe50. The domains are the eight training sessions in session order;
``domains:`` on the stream picks and orders them.

Every experience is tested on the whole held-out set, as the protocol's one test set: the test
split carries no domain ids, and clbench's domain-incremental scenario then gives every
experience that one set (its features are computed once per model version).

``classification``: ``object`` (default: 50 classes, object j is class j-1) or ``category``
(10 classes, object j is class (j-1)//5, Avalanche's ``CORe50Dataset._objlab2cat``). Names:
categories as Continual-CLIP prompts them (vgthengane/Continual-CLIP continual_clip/datasets.py:
"plug adapters", "mobile phones", ...), objects as CORe50's labels2names ("plug_adapter1",
Avalanche's core50_data.py ``name2cat`` gives the ten category stems) with spaces
("plug adapter 1"); raw names keep CORe50's spelling. Prompt: "a good photo of a {}."
(Continual-CLIP configs/domain/core50.yaml). A copy missing some object folders runs on the
objects it has; every session folder is required.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

import lazy_loader as lazy
from pydantic import BaseModel, ConfigDict, Field

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..errors import UserError
from ..facts import DatasetFacts
from .base import Dataset
from .files import FileImageSet, list_images
from .layout import locate

torch = lazy.load("torch")  # imported on first use: validate and list never load it

FOLDER = "core50_128x128"
HINT = "get core50_128x128.zip from http://bias.csr.unibo.it/maltoni/download/core50/core50_128x128.zip and unpack it there"
TRAIN_SESSIONS = (1, 2, 4, 5, 6, 8, 9, 11)
TEST_SESSIONS = (3, 7, 10)
DOMAINS = tuple(f"s{k}" for k in TRAIN_SESSIONS)
OBJECTS = 50
#: category stems in category order (ContinualAI/avalanche avalanche/benchmarks/datasets/core50/core50_data.py ``name2cat``)
CATEGORY_STEMS = ("plug_adapter", "mobile_phone", "scissor", "light_bulb", "can", "glass", "ball", "marker", "cup", "remote_control")
#: vgthengane/Continual-CLIP continual_clip/datasets.py (core50 ``classes_names``), as MoE-Adapters4CL copies it
CATEGORY_NAMES = ("plug adapters", "mobile phones", "scissors", "light bulbs", "cans", "glasses", "balls", "markers", "cups",
                  "remote controls")
TEMPLATES = ["a good photo of a {}."]
FRAME = re.compile(r"C_(\d+)_(\d+)_\d+\.png", re.IGNORECASE)


class Core50Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Optional[str] = None  # data root; the sessions are in <root>/core50_128x128
    path: Optional[str] = None  # the core50_128x128 folder itself (absolute, or below root), instead of root's
    classification: Literal["object", "category"] = "object"  # 50 objects or their 10 categories as classes
    image_size: Optional[int] = Field(None, ge=8)  # decode size; default: the model's input size
    workers: Optional[int] = Field(None, ge=0)  # decoding processes; default min(8, CPUs)


def class_names(classification: str) -> tuple[list[str], list[str]]:
    """(CLIP names, raw names) of the classes, in class-id order."""
    if classification == "category":
        return list(CATEGORY_NAMES), list(CATEGORY_STEMS)
    raw = [f"{stem}{k}" for stem in CATEGORY_STEMS for k in range(1, 6)]
    return [f"{stem.replace('_', ' ')} {k}" for stem in CATEGORY_STEMS for k in range(1, 6)], raw


def _session(base: Path, session: int, classification: str) -> tuple[list[str], list[int]]:
    """Paths and class ids of one session's frames (objects in order, frames sorted by name)."""
    folder = base / f"s{session}"
    if not folder.is_dir():
        raise UserError(f"{folder}: session folder missing; core50 needs all 11 sessions (s3, s7, s10 are the test set)")
    paths, labels = [], []
    for obj in range(1, OBJECTS + 1):
        objdir = folder / f"o{obj}"
        if not objdir.is_dir():
            continue
        for image in list_images(objdir):
            found = FRAME.fullmatch(image.name)
            if found and (int(found.group(1)), int(found.group(2))) != (session, obj):
                raise UserError(f"{image}: frame of session {int(found.group(1))}, object {int(found.group(2))} "
                                f"in the folder of s{session}/o{obj}; unpack the archive again")
            paths.append(str(image))
            labels.append(obj - 1 if classification == "object" else (obj - 1) // 5)
    if not paths:
        raise UserError(f"{folder}: no frames in o1..o{OBJECTS}; the session is missing or incomplete")
    return paths, labels


def build_core50(**options) -> Dataset:
    """CORe50 from ``<root>/core50_128x128`` (``Core50Options`` keys): the eight training sessions as domains, the
    held-out sessions 3, 7, 10 as every domain's test set. UserError for a missing folder or a misplaced frame."""
    opts = Core50Options(**options)
    base = locate("core50", FOLDER, opts.root, opts.path, HINT)
    kwargs = {"workers": opts.workers} if opts.workers is not None else {}
    size = opts.image_size or 224
    paths, labels, domains = [], [], []
    for d, session in enumerate(TRAIN_SESSIONS):
        p, y = _session(base, session, opts.classification)
        paths += p
        labels += y
        domains += [d] * len(p)
    test_paths, test_labels = [], []
    for session in TEST_SESSIONS:
        p, y = _session(base, session, opts.classification)
        test_paths += p
        test_labels += y
    test = FileImageSet(test_paths, torch.tensor(test_labels), None, size=size, **kwargs)  # no domains: every session's test set
    names, raw = class_names(opts.classification)
    return Dataset(
        name="core50", class_names=names, templates=list(TEMPLATES),
        train=FileImageSet(paths, torch.tensor(labels), torch.tensor(domains), size=size, **kwargs), test=test,
        domain_names=list(DOMAINS), raw_class_names=raw,
    )


class Core50(DatasetPlugin):
    """CORe50's NI protocol: 8 training sessions as domains, sessions 3, 7, 10 as the test set; objects or categories."""

    name = "core50"
    Options = Core50Options
    input_size_option = "image_size"
    offers_raw_names = True

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        n = OBJECTS if options.get("classification", "object") == "object" else len(CATEGORY_STEMS)
        return DatasetFacts(num_classes=n, num_templates=len(TEMPLATES), domains=DOMAINS)

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_core50(**options)


@hookimpl
def clbench_add_datasets(register):
    register(Core50)

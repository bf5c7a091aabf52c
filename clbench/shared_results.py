"""Work that several cells of a grid would repeat, done once per machine: a content-addressed store.

Every method of a stream and seed starts from the same pretrained model, so the
zero-shot image features of its test sets (from which ``Z``, the initial
evaluation, and every evaluation of a frozen image tower follow) and the text
features of its class prompts are the same in all of them. The Learner asks
this store for them by a key that names everything the result depends on (a
fingerprint of the model's weights, the images' identity, the prompts, the
device kind, precision and batch size, torch's and open_clip's versions); the
first cell to ask computes and saves, every later one loads the identical
tensors. So a record is the same with and without the store.

Entries live in ``clbench.cache_dir.cache_folder("shared")``; they are written
atomically, read with ``weights_only``, checked against their full key, and a
per-key ``flock`` makes a second process wait for the first one's result
instead of computing it again. A broken entry is deleted and recomputed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Callable

import lazy_loader as lazy

from .cache_dir import cache_folder
from .locks import waiting_lock
from .results import atomic_write

torch = lazy.load("torch")

FORMAT = 1


def key_of(parts: dict) -> str:
    """The hex sha256 of ``parts`` as canonical JSON (sorted keys): an entry's file name."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def weights_fingerprint(model) -> str:
    """A fingerprint of a model: its modules' ``repr`` (layer kinds and sizes, activation functions) and, for every
    parameter and buffer (non-persistent ones included), its name, shape, dtype and up to 4,096 evenly strided values
    (all of a small tensor), hashed with sha256.

    Two checkpoints that differ anywhere in a trained layer differ in its sampled values; one host copy
    of a few values per tensor, so it is cheap for ViT-L as for the tiny model.
    """
    h = hashlib.sha256(repr(model).encode())  # the modules themselves: activations (QuickGELU or GELU), sizes
    tensors = [*model.named_parameters(), *model.named_buffers()]  # buffers include non-persistent ones (attention masks)
    with torch.no_grad():
        for name, tensor in tensors:
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().contiguous()
            h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


class SharedResults:
    """Tensors computed once per key on this machine (``folder`` None: a store that never keeps anything)."""

    def __init__(self, folder: Path | None):
        self.folder = None if folder is None else Path(folder)
        self.hits = 0  # entries loaded instead of computed, for the cost record
        self.misses = 0

    @classmethod
    def default(cls) -> "SharedResults":
        """The store in the machine's cache folder, or an inert one when ``CLBENCH_CACHE_DIR=off``."""
        return cls(cache_folder("shared"))

    def get(self, parts: dict, compute: Callable[[], dict[str, "torch.Tensor"]]) -> dict[str, "torch.Tensor"]:
        """The tensors stored under ``parts``, computing and storing them first when absent.

        ``compute()`` returns a dict of tensors (any device; stored on the host, returned as
        computed or as loaded on the host). Another process computing the same key is waited
        for. A store folder that cannot be written makes this plain ``compute()``.
        """
        if self.folder is None:
            return compute()
        key = key_of({"format": FORMAT, **parts})
        path = self.folder / key[:2] / f"{key}.pt"
        held = contextlib.ExitStack()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(waiting_lock(path.with_suffix(".lock")))
        except OSError:
            return compute()
        with held:
            found = _read(path, key)
            if found is not None:
                self.hits += 1
                return found
            result = compute()
            self.misses += 1
            entry = {"key": key, "tensors": {k: v.detach().cpu() for k, v in result.items()}}
            try:
                atomic_write(path, lambda f: torch.save(entry, f), binary=True)
            except OSError:  # a full or read-only disk, a folder deleted meanwhile: the entry is lost, never the cell
                pass
            return result


def _read(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if entry.get("key") != key:
            raise ValueError("entry of another key")
        return dict(entry["tensors"])
    except Exception:  # truncated, foreign or unreadable: recomputed, never trusted
        path.unlink(missing_ok=True)
        return None

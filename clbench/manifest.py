"""Provenance for a record: which code, packages and hardware produced it."""
from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import lazy_loader as lazy

import clbench

torch = lazy.load("torch")  # imported on first use (a cell that runs has loaded it already)

PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "pluggy", "pydantic", "pandas")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the clbench checkout, with '+dirty' if it has local changes; None if not in git."""
    here = Path(clbench.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=1)
def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return versions


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def model_facts(clip, amp_dtype: torch.dtype | None) -> dict:
    """What the record must say about the model as built: arch, weights, activation, precision, parameter counts.

    ``parameters`` counts every parameter (LoRA adapters included); ``trainable_parameters``
    those the model section leaves trainable: all without ``model.adapter``, only the adapters
    with it. A method may still freeze more (``finetune``'s ``freeze_text``) or train nothing.
    """
    from .adapters import parameter_counts

    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[amp_dtype]
    return {"arch": clip.arch, "pretrained": clip.pretrained, "activation": clip.activation, "precision": precision,
            **parameter_counts(clip.model)}


def manifest(device: torch.device, seed: int, model: dict | None = None) -> dict:
    """Provenance of a record; ``model`` (from :func:`model_facts`) when the model was built."""
    return {
        "clbench_version": clbench.__version__,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": device_name(device),
        "seed": seed,
        "model": model,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }

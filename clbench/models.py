"""Building CLIP models through open_clip, offline-friendly.

A suite names a model as ``arch`` + ``pretrained``: an open_clip tag
(``ViT-B-16`` + ``openai``), a local checkpoint file, nothing (random init,
for tests), or ``arch: local-dir:/path`` with an ``open_clip_config.json``
beside the weights. clbench's own tiny configs (``clbench-tiny-32``) are
registered with open_clip at import, so tests and demos need no download.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from .config import looks_like_path as _looks_like_path
from .errors import UserError

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)

#: weights clbench ships, by (arch, tag); rebuilt by ``clbench pretrain``
PROJECT_WEIGHTS = {
    ("clbench-tiny-32", "tinyworld"): Path(__file__).parent / "weights" / "tinyworld" / "open_clip_model.safetensors",
    # the weights before the demo's streams were reworked (11 compositions and the sketch domain held out; its
    # MANIFEST.json says how to rebuild it): suites/small_buffer.yaml and docs/demo/small_buffer.md were run on it
    ("clbench-tiny-32", "tinyworld-v1"): Path(__file__).parent / "weights" / "tinyworld-v1" / "open_clip_model.safetensors",
}


@dataclass
class ClipModel:
    """An open_clip model with what the Learner needs to feed it."""

    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    arch: str
    pretrained: str | None
    activation: str = "gelu"  # the transformer MLPs' activation as built: "quick_gelu" or "gelu"
    adapter: dict | None = None  # the resolved model.adapter the model was wrapped with (None: the weights train)


def tag_needs_quick_gelu(arch: str, tag: str | None) -> bool:
    """True when open_clip's pretrained config for (arch, tag) says the weights were trained with QuickGELU.

    OpenAI's CLIP weights (tag ``openai``) and a few others were trained with
    QuickGELU, x·sigmoid(1.702x) (Radford et al. 2021); open_clip ≥ 2.29 builds
    plain GELU for names without a ``-quickgelu`` suffix and only warns. The
    flag comes from ``open_clip.get_pretrained_cfg(arch, tag)["quick_gelu"]``;
    a checkpoint file or no tag gives False (use the ``-quickgelu`` arch then).
    """
    if not tag:
        return False
    return bool(open_clip.get_pretrained_cfg(arch.replace("/", "-"), tag).get("quick_gelu", False))


def activation_name(model: torch.nn.Module) -> str:
    """``quick_gelu`` if any module of ``model`` is open_clip's QuickGELU, else ``gelu``."""
    from open_clip.transformer import QuickGELU

    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in model.modules()) else "gelu"


def _image_size(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def build_clip(arch: str, pretrained: str | None = None, device: str | torch.device = "cpu",
               adapter: dict | None = None) -> ClipModel:
    """The model for a suite's ``model:`` section, or a one-line UserError saying what to fix.

    With ``adapter`` (a resolved ``model.adapter`` mapping) the loaded model is wrapped with
    LoRA adapters and only they train (clbench/adapters.py).
    """
    is_local_dir = arch.startswith("local-dir:")
    if not is_local_dir and arch.replace("/", "-") not in open_clip.list_models():
        from .registry import did_you_mean

        raise UserError(
            f"model.arch: unknown architecture '{arch}'{did_you_mean(arch, open_clip.list_models())}; "
            f"see open_clip.list_models(), or use 'local-dir:/path' with an open_clip_config.json"
        )
    if is_local_dir and not Path(arch[len("local-dir:"):]).expanduser().is_dir():
        raise UserError(f"model.arch: folder '{arch[len('local-dir:'):]}' not found; it must hold open_clip_config.json and the weights")
    if pretrained in (None, "", "none"):
        pretrained = None
    elif (arch, pretrained) in PROJECT_WEIGHTS:
        path = PROJECT_WEIGHTS[(arch, pretrained)]
        if not path.is_file():
            raise UserError(f"model.pretrained: clbench's '{pretrained}' weights are missing at {path}; rebuild them with 'clbench pretrain'")
        pretrained = str(path)
    elif not is_local_dir and _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise UserError(f"model.pretrained: checkpoint file '{pretrained}' not found; put the weights there or fix the path")
        pretrained = str(path)
    elif not is_local_dir and pretrained not in open_clip.list_pretrained_tags_by_model(arch):
        tags = open_clip.list_pretrained_tags_by_model(arch) + [t for a, t in PROJECT_WEIGHTS if a == arch]
        raise UserError(
            f"model.pretrained: '{pretrained}' is neither a checkpoint file nor a known tag for {arch}; "
            f"tags: {', '.join(tags) or 'none'}"
        )
    quick_gelu = not is_local_dir and pretrained is not None and tag_needs_quick_gelu(arch, pretrained)
    try:
        with _quiet_open_clip():
            model = open_clip.create_model(
                arch, pretrained=None if is_local_dir else pretrained, device=device, weights_only=True,
                force_quick_gelu=quick_gelu,
            )
    except (RuntimeError, OSError, ValueError) as exc:
        where = "the Hugging Face cache (HF_HOME, default ~/.cache/huggingface)"
        raise UserError(
            f"model: could not load weights for {arch} / {pretrained}: {exc}. Without internet, download them "
            f"once elsewhere into {where}, or pass the checkpoint file as model.pretrained"
        ) from exc
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    activation = activation_name(model)
    if adapter:
        from .adapters import apply_adapter

        apply_adapter(model, adapter, arch)
    return ClipModel(model, open_clip.get_tokenizer(arch), _image_size(model), mean, std, arch, pretrained, activation,
                     adapter or None)


class _quiet_open_clip:
    """open_clip logs a warning for every randomly initialised model; tests make hundreds."""

    def __enter__(self):
        self._logger = logging.getLogger()
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False

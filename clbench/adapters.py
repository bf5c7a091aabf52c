"""Parameter-efficient training: LoRA adapters on a CLIP model's towers (``model.adapter``), through peft.

``model: {adapter: {kind: lora, rank: 8, alpha: 16, towers: [image, text], targets: [...]}}``
wraps the named layers of the chosen towers with LoRA (Hu et al., ICLR 2022) and freezes
every other weight, so any method, built-in or third-party, trains only the adapters without
knowing: the Learner trains whatever ``requires_grad`` parameters exist.

Targets name layers of open_clip's transformer blocks:

* ``c_fc``, ``c_proj``: the MLP's two ``nn.Linear`` layers (peft's ``lora.Linear``);
* ``in_proj``: attention's joint query/key/value projection, which open_clip keeps as the
  ``in_proj_weight`` parameter of ``nn.MultiheadAttention`` (or of its own ``Attention``):
  one adapter of shape (3·width × width), through peft's ``target_parameters``;
* ``out_proj``: attention's output projection. Inside ``nn.MultiheadAttention`` its
  ``forward`` is never called (torch reads ``out_proj.weight`` directly), so a plain
  ``lora.Linear`` there would receive no gradient; its weight is targeted as a parameter
  instead, and the adapter is switched on around each attention call. (peft's own wrapper
  for ``nn.MultiheadAttention`` is not used: it adds the adapter into the frozen weights
  before every call and subtracts it after, which changes them by rounding each time.)

Any other name matches ``nn.Linear`` layers of that name in towers open_clip does not build
itself (a timm image tower's ``qkv``/``fc1``, a Hugging Face text tower's ``query``), checked
when the model is built. Each wrapped layer adds rank·(in + out) parameters. The base weights
are never modified (bit for bit): a layer computes W·x + (α/r)·B·A·x, B starting at zero.

Nothing here imports torch or peft at import time, so ``clbench validate`` stays instant.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from .config import AdapterConfig
from .errors import UserError

#: the layer names of open_clip's own transformer blocks (VisionTransformer, TextTransformer)
TRANSFORMER_TARGETS = AdapterConfig.TARGETS
TOWERS = ("image", "text")
PEFT_MIN = (0, 17)  # LoRA on nn.Parameter (target_parameters) arrived in peft 0.17
ADAPTER_NAME = "default"


def tower_of(name: str) -> str:
    """``image`` for a parameter or module under ``visual.``, else ``text`` (as ``Learner.freeze`` splits the model)."""
    return "image" if name == "visual" or name.startswith("visual.") else "text"


def is_adapter_parameter(name: str) -> bool:
    """True for an adapter's parameter (peft names them ``...lora_A.default.weight``, ``...lora_B...``)."""
    return "lora_" in name


# --- checks without building the model (validate) ------------------------------------------------

def _peft_problem() -> str | None:
    if importlib.util.find_spec("peft") is None:
        return "LoRA adapters need the peft package: pip install 'clbench[lora]' (or pip install 'peft>=0.17')"
    try:
        version = md.version("peft")
    except md.PackageNotFoundError:
        return None
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parts < PEFT_MIN:
        return f"peft {version} is too old for LoRA on attention weights; pip install 'peft>=0.17'"
    return None


def _arch_config(arch: str) -> dict | None:
    """The open_clip model config of ``arch`` read from its JSON file (no torch import), or None when unknown."""
    if arch.startswith("hf-hub:"):
        return None
    if arch.startswith("local-dir:"):
        path = Path(arch[len("local-dir:"):]).expanduser() / "open_clip_config.json"
        try:
            return json.loads(path.read_text()).get("model_cfg")
        except (OSError, ValueError):
            return None
    folders = [Path(__file__).parent / "model_configs"]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.origin:
        folders.append(Path(spec.origin).parent / "model_configs")
    for folder in folders:
        path = folder / f"{arch.replace('/', '-')}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                return None
    return None


def tower_kinds(arch: str) -> dict[str, str | None]:
    """Per tower: ``transformer`` when open_clip builds it as its own transformer (whose layers are
    ``TRANSFORMER_TARGETS``), ``timm`` / ``resnet`` / ``hf`` for other towers, None when unknown."""
    cfg = _arch_config(arch)
    if not isinstance(cfg, dict):
        return {"image": None, "text": None}
    vision, text = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
    if vision.get("timm_model_name"):
        image = "timm"
    elif isinstance(vision.get("layers"), (list, tuple)):
        image = "resnet"
    else:
        image = "transformer"
    return {"image": image, "text": "hf" if text.get("hf_model_name") else "transformer"}


def image_blocks(arch: str) -> int | None:
    """The transformer block count of ``arch``'s image tower when open_clip builds it as its own ViT, else None."""
    cfg = _arch_config(arch)
    if not isinstance(cfg, dict) or tower_kinds(arch)["image"] != "transformer":
        return None
    layers = (cfg.get("vision_cfg") or {}).get("layers")
    return int(layers) if isinstance(layers, int) else None


def adapter_problem(arch: str, adapter: dict) -> tuple[str, str] | None:
    """(the key, what is wrong) for what is known without building the model, else None.

    peft must be installed; when open_clip builds every chosen tower as its own transformer, each
    target must be one of its layer names (other towers' names are checked when the model is built).
    """
    problem = _peft_problem()
    if problem:
        return "model.adapter", problem
    kinds = tower_kinds(arch)
    known = [t for t in adapter["towers"] if kinds[t] == "transformer"]
    if known and len(known) == len(adapter["towers"]):
        for target in adapter["targets"]:
            if target not in TRANSFORMER_TARGETS:
                from .registry import did_you_mean

                where = " and ".join(known)
                towers = f"{where} tower{'s' if len(known) > 1 else ''}"
                return "model.adapter.targets", (f"'{target}' is not a layer of {arch}'s {towers}"
                                                 f"{did_you_mean(target, TRANSFORMER_TARGETS)}; "
                                                 f"use any of {', '.join(TRANSFORMER_TARGETS)}")
    return None


# --- building ----------------------------------------------------------------------------------

class _OutProjSwitch:
    """Switches on the LoRA of an ``out_proj`` inside ``nn.MultiheadAttention`` while that attention runs.

    torch's attention reads ``out_proj.weight`` without calling ``out_proj``, so peft's
    parameter wrapper (which adds its adapter only inside its own ``forward``) is entered here,
    from the attention's forward hooks. The hooks are bound methods, so a deepcopy of the model
    (``Learner.snapshot``) gets switches bound to the copy's wrappers.
    """

    def __init__(self, wrapper):
        self.wrapper = wrapper
        self._active = None

    def enter(self, module, args):
        wrapper = self.wrapper
        if wrapper.disable_adapters or wrapper.merged or self._active is not None:
            return
        self._active = wrapper._activate_lora(wrapper.active_adapters)
        self._active.__enter__()

    def exit(self, module, args, output):
        active, self._active = self._active, None
        if active is not None:
            active.__exit__(None, None, None)


def _resolve(model, adapter: dict, arch: str):
    """(Linear module names, parameter names) the adapter wraps, by full name.

    A target matches the ``nn.Linear`` layers of that name in the chosen towers (``in_proj`` also
    matches attention's ``in_proj_weight``); UserError when a target or a tower gets no layer.
    """
    import torch.nn as nn

    towers, targets = set(adapter["towers"]), list(adapter["targets"])
    modules = dict(model.named_modules())
    linear, params = [], []
    hits = {t: 0 for t in targets}
    per_tower = {t: 0 for t in towers}
    for name, module in modules.items():
        if not name or tower_of(name) not in towers:
            continue
        if "in_proj" in hits and module._parameters.get("in_proj_weight") is not None:
            params.append(f"{name}.in_proj_weight")
            hits["in_proj"] += 1
            per_tower[tower_of(name)] += 1
        parent_name, _, leaf = name.rpartition(".")
        if leaf not in hits or not isinstance(module, nn.Linear):
            continue
        if leaf == "out_proj" and isinstance(modules.get(parent_name), nn.MultiheadAttention):
            params.append(f"{name}.weight")  # its forward is never called: adapt the weight (see _OutProjSwitch)
        else:
            linear.append(name)
        hits[leaf] += 1
        per_tower[tower_of(name)] += 1
    where = f"the {' and '.join(t for t in TOWERS if t in towers)} tower{'s' if len(towers) > 1 else ''} of {arch}"
    missing = next((t for t, n in hits.items() if n == 0), None)
    if missing is not None:
        names = sorted({n.rpartition(".")[2] for n, m in modules.items() if n and tower_of(n) in towers and isinstance(m, nn.Linear)})
        raise UserError(f"model.adapter.targets: no Linear layer named '{missing}' in {where}; "
                        f"its Linear layers are named: {', '.join(names) or 'none'}")
    empty = next((t for t in TOWERS if per_tower.get(t) == 0), None)
    if empty is not None:
        raise UserError(f"model.adapter.towers: none of the targets ({', '.join(targets)}) is a layer of the {empty} "
                        f"tower of {arch}; drop '{empty}' from towers or name its layers in targets")
    return linear, params


def apply_adapter(model, adapter: dict, arch: str = "the model") -> dict:
    """Wrap ``model`` (an open_clip CLIP) with the adapter in place and freeze every other parameter.

    ``adapter`` is a resolved ``model.adapter`` mapping (see ``clbench.config.AdapterConfig``).
    Returns ``{"layers": wrapped layers, "parameters": adapter parameters}``. UserError when a
    target names no layer of the chosen towers, or peft is missing.
    """
    problem = _peft_problem()
    if problem:
        raise UserError(f"model.adapter: {problem}")
    import warnings

    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    linear, params = _resolve(model, adapter, arch)
    common = dict(r=adapter["rank"], lora_alpha=adapter["alpha"], bias="none")
    # peft matches a target name as a suffix of a module's name, and the text tower's names (transformer.…) are
    # suffixes of the image tower's (visual.transformer.…): inject under each top-level module, with names below it
    groups: dict[str, dict[str, list[str]]] = {}
    for kind, names in (("linear", linear), ("params", params)):
        for name in names:
            top, _, below = name.partition(".")
            top, below = (top, below) if below else ("", name)
            groups.setdefault(top, {"linear": [], "params": []})[kind].append(below)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        for top, group in groups.items():
            root = model.get_submodule(top) if top else model
            in_proj = [p for p in group["params"] if p.endswith("in_proj_weight")]
            first = [p for p in group["params"] if p not in in_proj]
            # 1. Linear layers (with the dropout) and out_proj weights; 2. in_proj weights, which wrap the attention
            # itself (one pass cannot do both: wrapping an attention moves its out_proj under base_layer)
            if group["linear"] or first:
                inject_adapter_in_model(LoraConfig(target_modules=group["linear"] or None, target_parameters=first or None,
                                                   lora_dropout=adapter["dropout"], **common), root, adapter_name=ADAPTER_NAME)
                _forget_peft_config(root)
            if in_proj:
                inject_adapter_in_model(LoraConfig(target_modules=None, target_parameters=in_proj, lora_dropout=0.0, **common),
                                        root, adapter_name=ADAPTER_NAME)
                _forget_peft_config(root)
    wrapped = sum(isinstance(m, BaseTunerLayer) for m in model.modules())
    if wrapped != len(linear) + len(params):  # peft matched other layers than those named: never train those silently
        raise RuntimeError(f"model.adapter: peft wrapped {wrapped} layers, expected {len(linear) + len(params)}")
    _switch_mha_out_proj(model)
    trainable = 0
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_parameter(name))
        trainable += p.numel() if p.requires_grad else 0
    return {"layers": wrapped, "parameters": trainable}


def _forget_peft_config(model) -> None:
    """peft leaves its config on the model; the suite holds ours, and a second pass would warn about it."""
    if "peft_config" in vars(model):
        delattr(model, "peft_config")


def _switch_mha_out_proj(model) -> None:
    import torch.nn as nn
    from peft.tuners.lora.layer import ParamWrapper

    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention) and isinstance(module.out_proj, ParamWrapper):
            switch = _OutProjSwitch(module.out_proj)
            module.register_forward_pre_hook(switch.enter)
            module.register_forward_hook(switch.exit, always_call=True)


def adapter_parameters(model) -> dict[str, Any]:
    """The adapters' parameters by name."""
    return {name: p for name, p in model.named_parameters() if is_adapter_parameter(name)}


def adapter_bytes(model) -> int:
    """Bytes of the adapters' parameters (the record's ``memory.bytes.adapters``)."""
    from .memory import nbytes

    return nbytes(list(adapter_parameters(model).values()))


def parameter_counts(model) -> dict[str, int]:
    """``{"parameters": every parameter (adapters included), "trainable_parameters": those with requires_grad}``."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"parameters": total, "trainable_parameters": trainable}

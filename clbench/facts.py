"""What ``clbench validate`` knows about a dataset and a stream before any data is read.

A dataset plugin declares its ``DatasetFacts`` in ``DatasetPlugin.facts(options)``
(clbench/dataset_plugin.py); every field left None is unknown until the data is
read, and the checks that need it then run when the cell builds its stream.
Methods check their hyper-parameters against a ``StreamFacts`` in ``Method.check``
(template indices, memory sizes, replay batches), so a suite whose values cannot
work on a stream is refused by ``validate`` with one line naming the key, instead
of failing in every cell at run time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DatasetFacts:
    """A dataset's shape, known from its options alone (None: unknown without reading the data).

    ``domains``: the domain names in id order, ``()`` for a dataset without domains;
    ``train_per_class``: training images of each class (of each class in each domain,
    for a dataset with domains), where every class has the same count.
    """

    num_classes: Optional[int] = None
    num_templates: Optional[int] = None
    domains: Optional[tuple[str, ...]] = None
    train_per_class: Optional[int] = None


@dataclass(frozen=True)
class StreamFacts:
    """One stream as a method's ``check`` sees it (None: unknown until the data is read).

    ``num_classes``: the classes the stream teaches (holdout classes excluded);
    ``domains``: the domains it uses; ``train_size``: training images over all its
    experiences; ``label``: the stream's name in tables, for messages.
    """

    label: str
    dataset: str
    scenario: str
    steps: Optional[int]
    num_classes: Optional[int] = None
    num_templates: Optional[int] = None
    domains: Optional[tuple[str, ...]] = None
    train_size: Optional[int] = None


def stream_facts(label: str, dataset: str, scenario: str, steps: Optional[int], facts: DatasetFacts,
                 holdout_classes: int | list[int] = 0, domains: Optional[list[str]] = None,
                 templates: Optional[list[str]] = None) -> StreamFacts:
    """The stream's facts from its dataset's and its own keys (``templates``: a ``prompts.templates`` override)."""
    held = len(holdout_classes) if isinstance(holdout_classes, list) else holdout_classes
    n_classes = None if facts.num_classes is None else facts.num_classes - held
    used = tuple(domains) if domains is not None else facts.domains
    train_size = None
    if facts.train_per_class is not None and n_classes is not None and used is not None:
        train_size = facts.train_per_class * n_classes * max(1, len(used))
    n_templates = len(templates) if templates else facts.num_templates
    return StreamFacts(label, dataset, scenario, steps, n_classes, n_templates, used, train_size)


@dataclass(frozen=True)
class ModelFacts:
    """The model as a method's ``check`` sees it, read from its configuration without building it.

    ``arch``: the suite's ``model.arch``; ``image_tower``: how open_clip builds the image tower
    (``transformer``: its own ViT, whose blocks take prompts and adapters; ``timm``, ``resnet``;
    None when unknown); ``image_blocks``: that ViT's number of transformer blocks (None when
    unknown or not a ViT); ``adapter_towers``: the towers ``model.adapter`` (LoRA) wraps.
    """

    arch: str
    image_tower: Optional[str] = None
    image_blocks: Optional[int] = None
    adapter_towers: tuple[str, ...] = ()


def image_tower_problem(model: Optional[ModelFacts]) -> Optional[str]:
    """Why prompts, prefixes or adapters cannot go into the model's image tower (clbench/image_tower.py), else None."""
    if model is None:
        return None
    if model.image_tower not in (None, "transformer"):
        return (f"needs open_clip's own ViT image tower to insert its prompts or adapters; {model.arch}'s is a "
                f"{model.image_tower} tower: use a ViT architecture")
    if "image" in model.adapter_towers:
        return "cannot insert its prompts or adapters into an image tower wrapped by model.adapter (LoRA); drop model.adapter or use towers: [text]"
    return None


def blocks_problem(blocks, model: Optional[ModelFacts]) -> Optional[str]:
    """None when every block index is below the image tower's block count (or it is unknown), else why not."""
    if model is None or model.image_blocks is None:
        return None
    past = [b for b in blocks if b >= model.image_blocks]
    if not past:
        return None
    n = model.image_blocks
    return f"block {past[0]} but {model.arch}'s image tower has {n} blocks; use blocks 0..{n - 1}"


def template_problem(template: int, stream: StreamFacts) -> Optional[str]:
    """None when ``template`` indexes one of the stream's prompt templates (or the count is unknown), else why not."""
    n = stream.num_templates
    if n is None or 0 <= template < n:
        return None
    return (f"{template} but stream '{stream.label}' (dataset {stream.dataset}) has {n} prompt template"
            f"{'s' if n != 1 else ''}; use 0{'' if n == 1 else f'..{n - 1}'}")

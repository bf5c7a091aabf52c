"""The validated shapes of a suite's sections.

Every key a suite may set is declared here (or in a method's / dataset's own
Params), with its default and range, so a typo is an error with "did you mean"
and a record can store the fully resolved configuration.
"""
from __future__ import annotations

from string import Formatter
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, NonNegativeFloat, NonNegativeInt, field_validator


def looks_like_path(value: str) -> bool:
    """A model.pretrained value naming a file rather than an open_clip tag."""
    return "/" in value or value.startswith(".") or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AdapterConfig(Section):
    """``model.adapter``: train LoRA adapters (Hu et al., ICLR 2022) instead of the model's weights.

    The named layers of the chosen towers are wrapped through peft and every other weight is
    frozen, so any method trains only the adapters (clbench/adapters.py). ``targets`` name
    layers of open_clip's transformer blocks: the MLP's ``c_fc`` and ``c_proj``, attention's
    ``in_proj`` (query/key/value together) and ``out_proj``; towers open_clip does not build
    itself (timm, Hugging Face) take their own Linear layers' names. Towers and targets are
    kept in a canonical order, so writing them in another order gives the same cell.
    """

    TARGETS: ClassVar[tuple[str, ...]] = ("c_fc", "c_proj", "in_proj", "out_proj")  # open_clip's transformer layers
    PARAMETER_TARGETS: ClassVar[tuple[str, ...]] = ("in_proj", "out_proj")  # adapted as weights: no dropout

    kind: Literal["lora"]
    rank: PositiveInt = 8  # r: the adapters' inner dimension
    alpha: PositiveFloat = 16.0  # the update is scaled by alpha / rank
    towers: list[Literal["image", "text"]] = Field(default_factory=lambda: ["image", "text"], min_length=1)
    targets: list[str] = Field(default_factory=lambda: list(AdapterConfig.TARGETS), min_length=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the adapters' input (Linear targets only)

    @field_validator("towers")
    @classmethod
    def _towers_once(cls, towers: list[str]) -> list[str]:
        dup = next((t for t in towers if towers.count(t) > 1), None)
        if dup:
            raise ValueError(f"tower '{dup}' is listed twice; each tower once")
        return sorted(towers)  # image, text

    @field_validator("targets")
    @classmethod
    def _layer_names(cls, targets: list[str]) -> list[str]:
        for target in targets:
            if not target.isidentifier():
                raise ValueError(f"'{target}' is not a layer name; use names such as {', '.join(cls.TARGETS)}")
        dup = next((t for t in targets if targets.count(t) > 1), None)
        if dup:
            raise ValueError(f"target '{dup}' is listed twice; each target once")
        return sorted(targets)

    @field_validator("dropout")
    @classmethod
    def _no_dropout_on_weights(cls, dropout: float, info) -> float:
        weights = [t for t in info.data.get("targets") or [] if t in cls.PARAMETER_TARGETS]
        if dropout and weights:
            raise ValueError(f"peft's LoRA on attention weights ({', '.join(weights)}) takes no dropout; "
                             f"use 0.0, or only Linear targets such as c_fc, c_proj")
        return dropout


class ModelConfig(Section):
    arch: str = "clbench-tiny-32"  # open_clip name, a clbench tiny config, or local-dir:/path
    pretrained: Optional[str] = None  # open_clip tag, checkpoint file, or null for random init
    adapter: Optional[AdapterConfig] = None  # train LoRA adapters instead of the weights; None: the weights train

    def resolved(self) -> dict:
        """The cell config's ``model``: ``adapter`` only when set, so suites without it keep their cell ids."""
        out = self.model_dump(mode="json")
        if out.get("adapter") is None:
            out.pop("adapter", None)
        return out


class TrainConfig(Section):
    epochs: PositiveInt = 1  # passes over each experience's training data
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt = 256
    lr: PositiveFloat = 1e-5
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: NonNegativeFloat = 0.1
    momentum: NonNegativeFloat = 0.9  # sgd only
    schedule: Literal["cosine", "constant"] = "cosine"  # per experience
    warmup_steps: NonNegativeInt = 0
    grad_clip: Optional[PositiveFloat] = None  # max global gradient norm
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"  # auto: bf16 on CUDA, off on CPU
    device: str = "auto"  # auto: cuda if available, else cpu
    data_on_device: bool = True  # keep in-memory datasets (uint8) on the GPU: no host-to-device copy per batch
    compile: bool = False  # torch.compile the image and text encoders
    # ranks of one cell (DistributedDataParallel, docs/distributed.md): N GPUs, or N CPU processes (gloo); batch_size
    # stays the global batch. Not part of the cell's id: the same cell resumes on another number of devices.
    devices: PositiveInt = 1

    @field_validator("devices")
    @classmethod
    def _a_row_per_rank(cls, devices: int, info) -> int:
        batch = info.data.get("batch_size")
        if batch is not None and devices > batch:
            raise ValueError(f"{devices} devices for a batch_size of {batch}: every rank needs at least one row of each "
                             f"global batch; use devices <= batch_size")
        return devices


class StreamPrompts(Section):
    """How a stream names its classes to CLIP (``prompts:`` under a stream); defaults keep the dataset's own."""

    templates: Optional[list[str]] = Field(None, min_length=1)  # each with exactly one "{}"; default: the dataset's
    class_names: Literal["clip", "raw"] = "clip"  # clip: names written for prompts; raw: as the source ships them

    @field_validator("templates")
    @classmethod
    def _one_slot_each(cls, templates: Optional[list[str]]) -> Optional[list[str]]:
        for template in templates or []:
            problem = StreamPrompts.template_problem(template)
            if problem:
                raise ValueError(f"template {template!r} {problem}")
        return templates

    @staticmethod
    def template_problem(template: str) -> Optional[str]:
        """None for a usable prompt template (exactly one ``{}``, other braces doubled), else what is wrong."""
        try:
            fields = [f for _, f, _, _ in Formatter().parse(template) if f is not None]
        except ValueError as exc:
            return f"is not a format string ({exc}); write a literal brace as '{{{{' or '}}}}'"
        if len(fields) == 1 and fields[0] != "":
            return f"must write the class-name slot as '{{}}', not '{{{fields[0]}}}'"
        if len(fields) != 1:
            return f"must hold exactly one '{{}}' for the class name (it has {len(fields)})"
        return None


class StreamConfig(Section):
    """Dataset-specific keys (e.g. ``root``, ``num_classes``) sit beside these and go to the dataset.

    ``class_order`` is a name or an explicit permutation: ``seeded`` (the default, also for
    seed 1993) is a torch permutation seeded by the cell's seed; other names (``icarl``,
    ``pycil``, ...) are the published orders a dataset declares. ``prompts`` replaces the
    dataset's templates and/or class names, e.g. Continual-CLIP's single template with
    CIFAR-100's raw names. Keys left at their defaults stay out of the resolved config, so
    suites that do not use them keep their cell ids.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    SEEDED_ORDER: ClassVar[str] = "seeded"  # the default order's name; stored as null in the resolved config

    dataset: Optional[str] = None  # the dataset plugin's name (a dataset-incremental stream lists ``datasets`` instead)
    scenario: Literal["class_incremental", "domain_incremental", "dataset_incremental"] = "class_incremental"
    steps: Optional[PositiveInt] = None  # class-incremental: number of experiences
    #: dataset-incremental: the datasets in order, each ``{dataset: name, label: optional, <its options>}``
    datasets: Optional[list[Any]] = None
    #: dataset-incremental: ``dataset`` scores each test set over its own dataset's classes (MTIL), ``all`` over
    #: every dataset's (X-TAIL)
    label_space: Optional[Literal["dataset", "all"]] = None
    name: Optional[str] = None  # label in tables; default dataset/scenario/steps
    class_order: Optional[Union[str, list[int]]] = None  # an order's name, or a permutation of the class ids; None: seeded
    domains: Optional[list[str]] = None  # restrict to these domains (and this order)
    #: a zero-shot control set kept out of the stream (``zs_retention``): k, the last k classes of the order; or a
    #: list of class ids, those classes (e.g. classes the model was pretrained on, beside a stream of new ones)
    holdout_classes: Union[NonNegativeInt, list[NonNegativeInt]] = 0
    prompts: Optional[StreamPrompts] = None  # templates / class names for CLIP; default: the dataset's
    train: Optional[dict] = None  # overrides of the suite's train settings for this stream

    @field_validator("holdout_classes", mode="before")
    @classmethod
    def _count_or_distinct_ids(cls, value: Any) -> Any:
        """A count (int >= 0) or a non-empty list of distinct class ids (ints >= 0), sorted: the order means nothing."""
        def is_id(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        if is_id(value):
            return value
        if isinstance(value, list) and value and all(is_id(v) for v in value):
            dup = next((c for c in value if value.count(c) > 1), None)
            if dup is not None:
                raise ValueError(f"class {dup} is listed twice; list each control class once")
            return sorted(value)
        if isinstance(value, list) and not value:
            raise ValueError("an empty list keeps no control set; use 0, a count, or a list of class ids")
        raise ValueError(f"must be a count of classes (an integer >= 0) or a list of class ids (integers >= 0), not {value!r}")

    @field_validator("class_order", mode="before")
    @classmethod
    def _name_or_ids(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value):
            return value
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            return value
        raise ValueError("must be an order's name (seeded, icarl, pycil, ...) or a list of class ids (integers >= 0)")


class ReportConfig(Section):
    metrics: list[str] = Field(default_factory=lambda: ["last", "avg_inc", "forgetting", "drift"])
    formats: list[Literal["csv", "md", "latex"]] = Field(default_factory=lambda: ["csv", "md", "latex"])
    #: a method (or row label) every other row is compared with, seed by seed; it must name exactly one row of the
    #: suite's leaderboard (``reference_row``)
    reference: Optional[str] = None
    plots: bool = False  # also write the figures (as clbench plot does) after a run
    html: bool = False  # write report.html (as clbench report does) next to the leaderboard after a run


def reference_row(name: str, rows) -> tuple[Optional[str], str]:
    """The leaderboard row that a reference ``name`` names among the row labels ``rows``, and ``""``; or None and a hint.

    ``name`` names a row when it is a row's label, or a method with exactly one row
    (``finetune`` for the single row ``finetune (loss=ce)``). Otherwise the hint (to append to
    the caller's one line) lists the method's rows when it has several, or is a did-you-mean.
    ``clbench table --reference`` and a suite's ``report.reference`` both resolve through this.
    """
    from .registry import did_you_mean

    rows = list(rows)
    if name in rows:
        return name, ""
    by_method = [r for r in rows if r.split(" ")[0] == name]
    if len(by_method) == 1:
        return by_method[0], ""
    return None, f"; '{name}' has several rows: {', '.join(by_method)}" if by_method else did_you_mean(name, rows)


STREAM_KEYS = set(StreamConfig.model_fields)

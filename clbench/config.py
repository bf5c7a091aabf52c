"""The validated shapes of a suite's sections.

Every key a suite may set is declared here (or in a method's / dataset's own
Params), with its default and range, so a typo is an error with "did you mean"
and a record can store the fully resolved configuration.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, NonNegativeFloat, NonNegativeInt


def looks_like_path(value: str) -> bool:
    """A model.pretrained value naming a file rather than an open_clip tag."""
    return "/" in value or value.startswith(".") or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    arch: str = "clbench-tiny-32"  # open_clip name, a clbench tiny config, or local-dir:/path
    pretrained: Optional[str] = None  # open_clip tag, checkpoint file, or null for random init


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


class StreamConfig(Section):
    """Dataset-specific keys (e.g. ``root``, ``num_classes``) sit beside these and go to the dataset."""

    model_config = ConfigDict(extra="allow", frozen=True)

    dataset: str
    scenario: Literal["class_incremental", "domain_incremental"] = "class_incremental"
    steps: Optional[PositiveInt] = None  # class-incremental: number of experiences
    name: Optional[str] = None  # label in tables; default dataset/scenario/steps
    class_order: Optional[list[NonNegativeInt]] = None  # default: dataset's canonical or seeded order
    domains: Optional[list[str]] = None  # restrict to these domains (and this order)
    holdout_classes: NonNegativeInt = 0  # last classes of the order, kept out as a control set
    train: Optional[dict] = None  # overrides of the suite's train settings for this stream


class ReportConfig(Section):
    metrics: list[str] = Field(default_factory=lambda: ["last", "avg_inc", "forgetting"])
    formats: list[Literal["csv", "md", "latex"]] = Field(default_factory=lambda: ["csv", "md", "latex"])
    reference: Optional[str] = None  # a method (or row label) every other row is compared with, seed by seed
    plots: bool = False  # also write the figures (as clbench plot does) after a run


STREAM_KEYS = set(StreamConfig.model_fields)

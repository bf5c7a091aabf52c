"""A procedural image world: coloured shapes, generated from a seed, no files.

It lets every test and a first demo run offline. Each class is a colour and a
shape ("red circle"); images vary in position, scale, rotation, colour and
background; visual domains (clean, noisy, inverted, sketch) change appearance
but never the class, so the same world serves class- and domain-incremental
streams. The same seed always gives the same pixels.
"""
from __future__ import annotations

import functools
import math
from typing import Literal

import lazy_loader as lazy
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from clbench import hookimpl

from ..dataset_plugin import DatasetPlugin
from ..facts import DatasetFacts
from .base import Dataset, InMemoryImageSet

torch = lazy.load("torch")  # imported on first use: validate and list never load it

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 220, 50),
    "purple": (140, 60, 180), "orange": (240, 140, 30), "cyan": (50, 210, 220), "pink": (240, 130, 190),
    "white": (245, 245, 245), "brown": (130, 80, 40),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar")
DOMAINS = ("clean", "noisy", "inverted", "sketch")
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a drawing of a {}.", "an image of a {}.")
MAX_CLASSES = len(COLOURS) * len(SHAPES)
_SPLIT_SALT = {"train": 1, "test": 2, "pretrain": 3}

# What the shipped tiny CLIP ("tinyworld") never saw while pretraining, so streams
# can teach something zero-shot does poorly on: one whole domain ("inverted", a
# colour negative: zero-shot names the complementary colour) and the 40
# colour-shape compositions 0..39. Each colour and each shape alone was seen, in
# the 30 compositions 40..69 (every colour three times, every shape three to
# six times), so zero-shot on the held-out ones is well above chance yet far below
# what training reaches, and 40..69 are a control set zero-shot knows.
PRETRAIN_DOMAINS = ("clean", "noisy", "sketch")
PRETRAIN_HELD_OUT_CLASSES = tuple(range(40))


def class_parts(k: int) -> tuple[str, str]:
    """Class k's (colour, shape): consecutive classes vary both, and k < 70 is a bijection."""
    colour = k % len(COLOURS)
    shape = (k // len(COLOURS) + colour) % len(SHAPES)
    return list(COLOURS)[colour], SHAPES[shape]


def class_name(k: int) -> str:
    return " ".join(class_parts(k))


def _shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    if shape == "circle":
        return u * u + v * v < 1.0
    if shape == "square":
        return torch.maximum(au, av) < 0.8
    if shape == "triangle":
        return (v < 0.75) & (1.5 * au - v < 0.85)
    if shape == "cross":
        return ((au < 0.28) & (av < 0.95)) | ((av < 0.28) & (au < 0.95))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 < 1.0) & (r2 > 0.4)
    if shape == "diamond":
        return au + av < 1.0
    if shape == "bar":
        return (au < 1.0) & (av < 0.3)
    raise ValueError(shape)


def render(labels: torch.Tensor, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean images (N, 3, size, size) uint8 for ``labels``, and their shape masks."""
    n, hi = len(labels), 2 * size  # draw at twice the size, then average: smooth edges
    axis = torch.linspace(-1, 1, hi)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    cx, cy = (torch.rand(2, n, 1, 1, generator=generator) - 0.5) * 0.6
    scale = 0.45 + 0.3 * torch.rand(n, 1, 1, generator=generator)
    theta = 2 * math.pi * torch.rand(n, 1, 1, generator=generator)
    dx, dy = x - cx, y - cy
    u = (dx * torch.cos(theta) + dy * torch.sin(theta)) / scale
    v = (-dx * torch.sin(theta) + dy * torch.cos(theta)) / scale
    mask = torch.zeros(n, hi, hi, dtype=torch.bool)
    colour = torch.empty(n, 3)
    for i, k in enumerate(labels.tolist()):
        c, s = class_parts(k)
        mask[i] = _shape_mask(s, u[i], v[i])
        colour[i] = torch.tensor(COLOURS[c], dtype=torch.float)
    colour = (colour + 18 * torch.randn(n, 3, generator=generator)).clamp(0, 255)
    background = 20 + 60 * torch.rand(n, 1, 1, 1, generator=generator)
    background = background + 8 * torch.randn(n, 1, hi, hi, generator=generator)
    m = mask[:, None].float()
    img = background * (1 - m) + colour[:, :, None, None] * m
    img = torch.nn.functional.avg_pool2d(img, 2)
    return img.round().clamp(0, 255).to(torch.uint8), torch.nn.functional.avg_pool2d(m, 2)[:, 0]


def apply_domain(domain: str, clean: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The same objects seen in another visual domain."""
    if domain == "clean":
        return clean
    if domain == "noisy":
        noise = 45 * torch.randn(clean.shape, generator=generator)
        return (clean.float() + noise).round().clamp(0, 255).to(torch.uint8)
    if domain == "inverted":
        return 255 - clean
    if domain == "sketch":  # coloured outline on paper
        m = (mask > 0.5).float()[:, None]
        edge = (torch.nn.functional.max_pool2d(m, 3, 1, 1) - (-torch.nn.functional.max_pool2d(-m, 3, 1, 1))).clamp(0, 1)
        ink = clean.float() * m
        ink = ink.sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp(min=1)
        paper = torch.full_like(clean, 235, dtype=torch.float)
        return (paper * (1 - edge) + ink * edge).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(domain)


class SyntheticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_classes: int = Field(20, ge=2, le=MAX_CLASSES)
    train_per_class: int = Field(40, ge=1)  # per class and domain
    test_per_class: int = Field(20, ge=1)
    image_size: int = Field(32, ge=8, le=256)
    world_domains: list[Literal["clean", "noisy", "inverted", "sketch"]] = list(DOMAINS)
    world_seed: int = 0  # the world's pixels; the cell seed only changes class order and training
    # "pretrain": the train split is the images the shipped tiny CLIP was pretrained on (clbench/pretrain.py)
    train_split: Literal["train", "pretrain"] = "train"
    # the world's classes first_class .. first_class + num_classes - 1 are this dataset's 0 .. num_classes - 1
    # (datasets of one world with disjoint classes, e.g. a dataset-incremental stream of three)
    first_class: int = Field(0, ge=0)

    @field_validator("world_domains")
    @classmethod
    def _unique(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct domains")
        return v

    @model_validator(mode="after")
    def _classes_in_the_world(self):
        if self.first_class + self.num_classes > MAX_CLASSES:
            raise ValueError(f"first_class {self.first_class} + num_classes {self.num_classes} passes the world's "
                             f"{MAX_CLASSES} classes; lower one of them")
        return self

    @model_validator(mode="after")
    def _pretrained_domain(self):
        if self.train_split == "pretrain" and not set(self.world_domains) & set(PRETRAIN_DOMAINS):
            raise ValueError(f"train_split 'pretrain' needs one of the pretraining domains ({', '.join(PRETRAIN_DOMAINS)}) "
                             f"in world_domains; the tiny CLIP never saw {', '.join(self.world_domains)}")
        classes = range(self.first_class, self.first_class + self.num_classes)
        if self.train_split == "pretrain" and all(k in PRETRAIN_HELD_OUT_CLASSES for k in classes):
            pretrained = [k for k in range(MAX_CLASSES) if k not in PRETRAIN_HELD_OUT_CLASSES]
            raise ValueError(f"train_split 'pretrain' has no images of classes {classes.start}..{classes.stop - 1}: the tiny CLIP "
                             f"was pretrained on classes {pretrained[0]}..{pretrained[-1]} only; raise num_classes "
                             f"(or first_class) to include some of them")
        return self

    @model_serializer(mode="wrap")
    def _without_default_split(self, handler: SerializerFunctionWrapHandler) -> dict:
        """``train_split`` is left out at its default, so streams written before it existed keep their cell ids."""
        out = handler(self)
        if out.get("train_split") == "train":
            del out["train_split"]
        if out.get("first_class") == 0:  # likewise
            del out["first_class"]
        return out


def render_split(split: str, classes, domains, per_class: int, image_size: int = 32, world_seed: int = 0) -> InMemoryImageSet:
    """``per_class`` images of each class in each domain; splits never share a random stream.

    A new image set each call, copied from pixels rendered once per process for the same arguments
    (a grid's cells share them: the demo's 110 cells would otherwise render their world 110 times;
    the copy keeps a caller that changes its set in place from changing the next cell's).
    """
    images, labels, domain_ids = _rendered(split, tuple(int(c) for c in classes), tuple(domains), per_class, image_size,
                                           world_seed)
    return InMemoryImageSet(images.clone(), labels.clone(), domain_ids.clone())


@functools.lru_cache(maxsize=16)  # the demo renders 14 different splits
def _rendered(split: str, classes: tuple[int, ...], domains: tuple[str, ...], per_class: int, image_size: int,
              world_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixels, labels and domain ids of ``render_split`` (which hands out copies)."""
    images, labels, domain_ids = [], [], []
    class_ids = torch.as_tensor(classes, dtype=torch.long)
    for d, domain in enumerate(domains):
        g = torch.Generator().manual_seed(world_seed * 1000 + _SPLIT_SALT[split] * 10 + DOMAINS.index(domain))
        y = class_ids.repeat_interleave(per_class)
        clean, mask = render(y, image_size, g)
        images.append(apply_domain(domain, clean, mask, g))
        labels.append(y)
        domain_ids.append(torch.full_like(y, d))
    return torch.cat(images), torch.cat(labels), torch.cat(domain_ids)


def _split(opts: SyntheticOptions, split: str, per_class: int) -> InMemoryImageSet:
    first = opts.first_class
    rendered = render_split(split, range(first, first + opts.num_classes), opts.world_domains, per_class, opts.image_size,
                            opts.world_seed)
    if first:
        rendered.labels = rendered.labels - first
    return rendered


def pretraining_split(opts: SyntheticOptions) -> InMemoryImageSet:
    """The images the tiny CLIP was pretrained on (``train_split: pretrain``), of the dataset's classes (``first_class`` on).

    Rendered exactly as clbench/pretrain.py renders its data: the ``pretrain`` random stream, every
    pretraining class (``PRETRAIN_HELD_OUT_CLASSES`` excluded) in each of ``PRETRAIN_DOMAINS``, then
    kept to the dataset's classes and the domains of ``world_domains``, ``train_per_class``
    images per class and domain. Held-out classes and the ``inverted`` domain were never pretrained on,
    so they have no images here. Domain ids index ``world_domains``, as in every split.
    """
    domains = [d for d in PRETRAIN_DOMAINS if d in opts.world_domains]
    classes = [k for k in range(MAX_CLASSES) if k not in PRETRAIN_HELD_OUT_CLASSES]
    parts = []
    for domain in domains:  # each domain has its own random stream: rendering one alone gives the same pixels
        rendered = render_split("pretrain", classes, [domain], opts.train_per_class, opts.image_size, opts.world_seed)
        first = opts.first_class
        keep = ((rendered.labels >= first) & (rendered.labels < first + opts.num_classes)).nonzero().flatten()
        parts.append((rendered.images[keep], rendered.labels[keep] - first, opts.world_domains.index(domain)))
    parts.sort(key=lambda part: part[2])  # in world_domains order
    return InMemoryImageSet(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                            torch.cat([torch.full_like(p[1], p[2]) for p in parts]))


def build_synthetic(**options) -> Dataset:
    """The synthetic world for ``SyntheticOptions`` keys (pydantic ValidationError for bad ones); the same options, the same pixels."""
    opts = SyntheticOptions(**options)
    return Dataset(
        name="synthetic",
        class_names=[class_name(opts.first_class + k) for k in range(opts.num_classes)],
        templates=list(TEMPLATES),
        train=pretraining_split(opts) if opts.train_split == "pretrain" else _split(opts, "train", opts.train_per_class),
        test=_split(opts, "test", opts.test_per_class),
        domain_names=list(opts.world_domains),
    )


class Synthetic(DatasetPlugin):
    """Coloured shapes in four visual domains, generated from a seed (no files)."""

    name = "synthetic"
    Options = SyntheticOptions

    @classmethod
    def facts(cls, options: dict) -> DatasetFacts:
        pretrain = options.get("train_split", "train") == "pretrain"  # held-out classes have no pretraining images
        return DatasetFacts(num_classes=options["num_classes"], num_templates=len(TEMPLATES),
                            domains=tuple(options["world_domains"]),
                            train_per_class=None if pretrain else options["train_per_class"])

    @classmethod
    def build(cls, options: dict) -> Dataset:
        return build_synthetic(**options)


@hookimpl
def clbench_add_datasets(register):
    register(Synthetic)

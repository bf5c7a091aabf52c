"""gdumb: Greedy sampler and Dumb learner (Prabhu et al., ECCV 2020).

Sampler: the experience's training images are offered once each, in a random order
(one shuffled pass, from the method's own generator), to a greedy class-balancing
memory of capacity K, exactly the rule of RaptorMai/online-continual-learning
agents/gdumb.py (``greedy_balancing_update``, the survey implementation of the
paper's sampler): with k_c = K // max(1, number of classes in the memory), an image
of class y is stored when y is not in the memory yet or holds fewer than k_c images;
if the memory is then full, one image, chosen uniformly at random, is first removed
from the class holding the most (ties: the class that entered the memory first).

Learner: after every experience the model is reset to its pretrained weights (the
cell's initial model, copied when the method is built) and trained on the memory
alone, ``epochs`` passes (default 256: Mammoth's models/gdumb.py ``--fitting_epochs``),
with finetune's objective (``loss: ce`` by default, the reference's cross-entropy;
``contrastive`` also works). CutMix as Mammoth's ``fit_buffer`` (utils/augmentations.py
``cutmix_data``, from the GDumb repo): per batch, lam ~ Beta(a, a) with a =
``cutmix_alpha``, a random permutation of the batch, a box of side sqrt(1 - lam) times
the image side centred at a uniform pixel and clipped, pasted from the permuted images;
lam becomes 1 - box area / image area, and the loss is
lam * L(images, y) + (1 - lam) * L(images, y[perm]). Mammoth mixes every batch
(``cutmix_prob: 1``); the GDumb repo mixes with probability 0.5.

Deliberate differences:
- memory rule: Mammoth's gdumb.py fills its plain reservoir ``Buffer`` (not class-
  balancing); the GDumb repo (drimpossible/GDumb src/dataloader.py) takes the first
  min(n_c, K // C) images of each class offline. The greedy online rule above is the
  paper's sampler; the shuffled pass replaces a shuffled data loader (RaptorMai's drops
  the last incomplete batch; here every image is offered);
- training schedule: Mammoth trains only after the last task and evaluates nothing
  before; clbench evaluates after every experience, so (as the paper: train whenever
  asked to predict) the reset and training happen after every experience. Kept:
  the epoch count, cutmix, and the batch size of the cell. Dropped: Mammoth's own
  optimizer and schedule (SGD, maxlr 0.05 with one warm-up epoch at maxlr/10, then
  CosineAnnealingWarmRestarts(T_0=1, T_mult=2, eta_min=minlr 5e-4), momentum and weight
  decay), because ``Learner.fit`` uses the cell's ``train`` optimizer, lr, warm-up and
  schedule (over all ``epochs`` passes) and weight decay for every method; the GDumb
  repo's gradient-norm clipping at 10 is replaced by the cell's ``grad_clip``;
- "from scratch" is the pretrained CLIP here (Mammoth rebuilds its backbone, a random
  or a pretrained initialisation by config); its CE head spans all N classes, here the
  seen classes' prompts;
- CutMix acts on the preprocessed (resized, normalised) images, as Mammoth's on its
  normalised tensors; its random draws come from the method's generator.

Defaults: buffer ``fraction: 0.01`` (Mammoth's models/config/gdumb.yaml: seq-cifar100,
buffer 500 of 50,000), ``epochs: 256``, ``cutmix_alpha: 1``, ``cutmix_prob: 1``. Like
Mammoth's COMPATIBILITY it is offered for class-incremental streams only (in a
domain-incremental stream the first domain fills every class's share for good).

``memory_summary``: ``replay_images`` (the memory's images as stored) and
``frozen_models`` (the pretrained weights kept for the resets).
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import lazy_loader as lazy
from pydantic import Field, field_validator

from clbench import Method, Params, hookimpl, to_device
from clbench.buffer import BufferSpec
from clbench.facts import template_problem
from clbench.losses import contrastive_loss, cross_entropy_loss
from clbench.memory import nbytes
from clbench.replay import memory_capacity

from .objective import label_space, objective

torch = lazy.load("torch")

FORMULA = ("greedy class-balancing memory (k_c = K // classes in memory; evict a random image of the largest class); "
           "after each experience: reset to the pretrained weights, train `epochs` passes on the memory alone with "
           "finetune's objective and CutMix lam*L(y) + (1-lam)*L(y[perm])")


class GDumbParams(Params):
    buffer: BufferSpec = Field(default_factory=lambda: BufferSpec(fraction=0.01))  # K: size or fraction
    loss: Literal["contrastive", "ce"] = "ce"
    template: int = Field(0, ge=0)  # prompt template used for training text features
    epochs: int = Field(256, ge=1)  # passes over the memory after each experience (Mammoth's fitting_epochs)
    cutmix_alpha: float = Field(1.0, ge=0)  # Beta(a, a) of CutMix's area ratio; 0 switches CutMix off
    cutmix_prob: float = Field(1.0, ge=0, le=1)  # probability a batch is mixed (Mammoth 1, the GDumb repo 0.5)

    @field_validator("buffer")
    @classmethod
    def _greedy_memory(cls, buffer: BufferSpec) -> BufferSpec:
        if buffer.policy != "class_balanced":
            raise ValueError(f"gdumb fills its memory with its own greedy class-balancing sampler, not "
                             f"'{buffer.policy}'; leave policy out")
        if buffer.per_class is not None:
            raise ValueError("gdumb's memory has one fixed capacity; give buffer.size or buffer.fraction")
        if buffer.size == 0 or buffer.fraction == 0:
            raise ValueError("gdumb trains on its memory alone; give the buffer a size above 0")
        return buffer


class GreedyMemory:
    """GDumb's greedy class-balancing memory over dataset ids (``members``: class -> ids, classes in entry order)."""

    def __init__(self, capacity: int, seed: int):
        self.capacity = capacity
        self.members: dict[int, list[int]] = {}
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed + 7727)

    def __len__(self) -> int:
        return self.size

    def offer(self, ids: list[int], labels: list[int], choose: Callable[[int], int] | None = None) -> None:
        """Offer images in order; ``choose(n)`` picks which of a class's n images to evict (default: uniform)."""
        choose = choose or (lambda n: int(torch.randint(n, (), generator=self.generator)))
        for i, y in zip(ids, labels):
            k_c = self.capacity // max(1, len(self.members))
            if y in self.members and len(self.members[y]) >= k_c:
                continue
            if self.size >= self.capacity:
                largest = max(self.members, key=lambda c: len(self.members[c]))  # first of the largest, in entry order
                self.members[largest].pop(choose(len(self.members[largest])))
                self.size -= 1
            self.members.setdefault(y, []).append(i)
            self.size += 1

    def ids(self) -> list[int]:
        return [i for members in self.members.values() for i in members]

    def counts(self) -> dict[int, int]:
        return {c: len(m) for c, m in self.members.items()}

    def state_dict(self) -> dict:
        return {"classes": torch.tensor(list(self.members), dtype=torch.long),
                "counts": torch.tensor([len(m) for m in self.members.values()], dtype=torch.long),
                "ids": torch.tensor(self.ids(), dtype=torch.long), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        ids = state["ids"].tolist()
        self.members, start = {}, 0
        for c, n in zip(state["classes"].tolist(), state["counts"].tolist()):
            self.members[c] = ids[start:start + n]
            start += n
        self.size = start
        self.generator.set_state(state["generator"])


def cutmix_box(size, lam: float, cx: int, cy: int) -> tuple[int, int, int, int]:
    """Mammoth's ``rand_bbox`` for an (N, C, H, W) ``size``: (x1, y1, x2, y2) on dims 2 and 3, given the centre."""
    W, H = size[2], size[3]
    cut = math.sqrt(1.0 - lam)
    cut_w, cut_h = int(W * cut), int(H * cut)
    clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
    return clip(cx - cut_w // 2, W), clip(cy - cut_h // 2, H), clip(cx + cut_w // 2, W), clip(cy + cut_h // 2, H)


def beta_quantile(alpha: float, u: float) -> float:
    """The u-quantile of Beta(alpha, alpha) (u uniform on [0, 1) gives a Beta draw)."""
    if alpha == 1.0:
        return u
    from scipy.special import betaincinv

    return float(betaincinv(alpha, alpha, u))


def cutmix(images, alpha: float, generator):
    """Mammoth's ``cutmix_data`` on a batch: (mixed images, permutation on the images' device, lam as pixel ratio)."""
    lam = beta_quantile(alpha, float(torch.rand((), generator=generator, dtype=torch.float64)))
    perm = to_device(torch.randperm(len(images), generator=generator), images.device)
    cx = int(torch.randint(images.shape[2], (), generator=generator))
    cy = int(torch.randint(images.shape[3], (), generator=generator))
    x1, y1, x2, y2 = cutmix_box(images.shape, lam, cx, cy)
    mixed = images.clone()
    mixed[:, :, x1:x2, y1:y2] = images[perm, :, x1:x2, y1:y2]
    return mixed, perm, 1.0 - (x2 - x1) * (y2 - y1) / (images.shape[-1] * images.shape[-2])


class GDumb(Method):
    name = "gdumb"
    Params = GDumbParams
    scenarios = ("class_incremental", "dataset_incremental")  # new classes in every experience

    @classmethod
    def check(cls, params, stream, train) -> dict[str, str]:
        problem = template_problem(params.template, stream)
        if problem:
            return {"template": problem}
        spec = params.buffer
        key = "buffer.size" if spec.size is not None else "buffer.fraction"
        capacity = memory_capacity(spec, stream.num_classes, stream.train_size)
        if capacity is not None and stream.train_size is not None and capacity > stream.train_size:
            return {key: f"a memory of {capacity} exemplars but stream '{stream.label}' has only {stream.train_size} "
                         f"training images; use a memory of at most {stream.train_size}"}
        if capacity == 0:
            return {key: f"{spec.fraction} of stream '{stream.label}' rounds to a memory of 0 exemplars, and gdumb "
                         f"trains on its memory alone; use a larger fraction or buffer.size"}
        return {}

    def __init__(self, params, learner):
        super().__init__(params, learner)
        train = learner.dataset.train
        if getattr(train, "ids", None) is None:
            raise ValueError("gdumb keeps exemplars by dataset id; this dataset's training set has no ids")
        spec = params.buffer
        capacity = spec.size if spec.size is not None else int(round(spec.fraction * sum(len(e.train) for e in learner.stream.experiences)))
        self.memory = GreedyMemory(capacity, learner.seed)
        self.cutmix_generator = torch.Generator().manual_seed(learner.seed + 6151)
        # the cell's initial model; built before a resumed cell restores its trained weights
        self.pretrained = {k: v.detach().clone() for k, v in learner.weights().items()}

    def memory_set(self):
        """The memory's images as an image set (positions in the dataset's training split)."""
        return self.learner.dataset.train.subset(torch.tensor(self.memory.ids(), dtype=torch.long))

    def train(self, exp) -> None:
        learner, data = self.learner, exp.train
        order = torch.randperm(len(data), generator=self.memory.generator)
        self.memory.offer(data.ids[order].tolist(), data.labels[order].tolist())
        with torch.no_grad():
            for name, weight in learner.weights().items():
                weight.copy_(self.pretrained[name])
        learner.weights_changed()
        if len(self.memory):
            learner.fit(exp, self.loss, data=self.memory_set(), epochs=self.params.epochs)

    def loss(self, batch):
        p = self.params
        if not p.cutmix_alpha or (p.cutmix_prob < 1 and float(torch.rand((), generator=self.cutmix_generator)) >= p.cutmix_prob):
            return objective(self.learner, batch, p.loss, p.template)
        learner, labels = self.learner, batch.labels
        # CutMix pairs rows across the whole batch: with train.devices > 1 the ranks' pixels are gathered, mixed alike
        # on every rank, and each rank encodes its own rows of the mix
        images, perm, lam = cutmix(batch.gather(batch.images), p.cutmix_alpha, self.cutmix_generator)
        images = batch.local(images)
        classes = label_space(learner, batch, p.loss)
        text = learner.class_features(classes, template=p.template, grad=True)
        classes_t = to_device(classes, labels.device)
        fn = contrastive_loss if p.loss == "contrastive" else cross_entropy_loss
        features = learner.encode_images(images)
        return (lam * fn(features, labels, text, classes_t, learner.logit_scale)
                + (1 - lam) * fn(features, labels[perm], text, classes_t, learner.logit_scale))

    def buffer_summary(self) -> dict:
        return {"exemplars": len(self.memory), "bytes": self.memory_bytes(), "policy": "gdumb_greedy",
                "capacity_rule": self.params.buffer.model_dump(exclude_none=True, exclude={"policy"})}

    def memory_bytes(self) -> int:
        return self.memory_set().stored_bytes() if len(self.memory) else 0

    def memory_summary(self) -> dict[str, int]:
        return {"replay_images": self.memory_bytes(), "frozen_models": nbytes(self.pretrained)}

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict(), "cutmix_generator": self.cutmix_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
        self.cutmix_generator.set_state(state["cutmix_generator"])

    def record_extras(self):
        p = self.params
        return {"formula": FORMULA, "epochs": p.epochs, "cutmix_alpha": p.cutmix_alpha, "cutmix_prob": p.cutmix_prob,
                "memory_classes": {str(c): n for c, n in self.memory.counts().items()},
                "defaults": "buffer fraction 0.01, epochs 256, cutmix_alpha 1, cutmix_prob 1, loss ce "
                            "(Mammoth models/gdumb.py and models/config/gdumb.yaml, seq-cifar100, buffer 500)"}


@hookimpl
def clbench_add_methods(register):
    register(GDumb)

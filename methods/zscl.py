"""zscl: distil towards the zero-shot CLIP on a reference dataset, average the weights (ZSCL, Zheng et al. 2023).

Zheng et al., "Preventing Zero-Shot Transfer Degradation in Continual Learning of Vision-Language
Models", ICCV 2023.

On every training batch (images x with labels y of experience t) and a batch of reference images r
(drawn from a reference dataset outside the stream), the loss is

    L = CE_ls(s·f(x)·g(P_t)ᵀ, y)
        + image_loss_weight · KD(z, z₀) + text_loss_weight · KD(zᵀ, z₀ᵀ)
        + l2_weight · Σ_i (θ_i − θ_i^start)²,
    z = s₀ · f(r) · g₀(R)ᵀ,   z₀ = s₀ · f₀(r) · g₀(R)ᵀ,   KD(a, b) = T² · mean_rows(−Σ softmax(b/T) · log softmax(a/T)),

where f, g are the current image and text towers, f₀, g₀ and s₀ the initial (zero-shot) model's
towers and logit scale (a frozen ``learner.snapshot()`` taken in ``__init__``), s the current logit
scale, P_t the prompts (template ``template``) of the experience's own classes, CE_ls cross-entropy
with label smoothing ``label_smoothing``, R the reference texts (the reference dataset's class
names through ``reference_prompt``), θ^start the trainable weights when the experience began.
KD(z, z₀) distils each reference image's distribution over the texts ("image loss"), KD(zᵀ, z₀ᵀ)
each text's distribution over the batch's images ("text loss"). Weight ensembling (``we``): the
average of the experience's start weights and the weights after steps 0, ``we_freq``,
2·``we_freq``, … (and after the last step) replaces the weights when the experience ends, and the
next experience starts from it. Prediction is CLIP's zero-shot rule.

Reference followed: Thunderbeee/ZSCL, mtil/ (the MTIL code). ``src/models/finetune.py``: the loss
above (``logits_current = logit_scale.exp() * ref_out_current @ ref_embeddings.t()`` with the
reference model's text features, ``logits_ref`` the same from the reference model's image
features, ``loss_ZSCL = distillation(logits_ref, logits_current, T)`` and its transpose,
``loss += l2 * l2_loss(model, l2_model)``, ``merge_we(model, we_model, we_n)`` when
``iteration % avg_freq == 0``, the saved model is ``we_model``); ``src/models/helpers.py``
(``distillation``: ``cross_entropy(s / T, softmax(t / T)) * T**2``, ``l2_loss``: summed squared
differences, ``merge_we``: (avg·n + θ)/(n + 1)). Defaults are the method's script,
``scripts/ZSCL.sh`` (``--image_loss --text_loss --we --avg_freq 100 --l2 1 --ls 0.2
--ref-dataset ImageNet --ref-sentences conceptual_captions``), and ``src/args.py`` where the script
is silent (``--T`` 2.0; ``--weight_adjust`` off, so both distillation weights are 1.0):
``temperature = 2.0``, ``image_loss_weight = text_loss_weight = 1.0``, ``l2_weight = 1.0``,
``we = true``, ``we_freq = 100``, ``label_smoothing = 0.2``; ``reference_prompt = "a photo of a
{}."`` is the template of the reference's ImageNet dataset (``src/datasets/imagenet.py``), which
finetune.py uses for the reference texts when no ``--ref-sentences`` is given;
``reference_batch_size`` defaults to the training batch size, as finetune.py builds the reference
loader with ``args.batch_size``. The repository's class-incremental code (``cil/continual_clip/
models.py``, ``cil/configs/class/*-ZSCL.yaml``) runs the same loss with other settings: both
distillation weights 5, ``avg_freq`` 10, no L2 term, label smoothing 0.2, Conceptual Captions
images and sentences as the reference, one epoch at lr 7e-6; ``image_loss_weight: 5,
text_loss_weight: 5, l2_weight: 0, we_freq: ...`` reproduces it here.

Label smoothing 0.2 over the current experience's classes assumes the reference's small learning
rate (1e-5 on ViT-B/16): at a learning rate tuned for plain fine-tuning of a small model it can
pull the current classes' prompts together (the demo's tiny CLIP on world-ci5, seed 0: last
accuracy 44% at the demo's lr 3e-4, 72% there with ``label_smoothing: 0``, 71% at lr 3e-5).

Deliberate differences from the reference:

- ``reference`` has no default: a suite names it like a stream's dataset (the paper's is ImageNet's
  training split, ``reference: {dataset: imagenet1k}``; the offline demo uses the synthetic world's
  pretraining split); ``validate`` refuses a missing, misspelled or ill-configured one;
- the reference texts are the reference dataset's class prompts; ZSCL.sh uses Conceptual Captions
  sentences, which no clbench dataset provides (the reference code's own fallback is the class
  prompts, as here); the texts' teacher features are computed once (the teacher is frozen);
- the reference images: a fixed-size batch per step from a shuffle of the reference training split
  (or of a seeded random subset of ``reference_images`` images), reshuffled per experience and when
  fewer than a batch remain (the reference cycles a shuffled DataLoader, with a short last batch);
- the logit scale trains, as in every clbench method (the reference leaves it out of the
  optimiser); the distillation logits use the initial scale s₀ on both sides, the value the
  reference's frozen scale keeps;
- weight ensembling also averages the weights after the experience's last step (the reference's
  loop runs ``iterations + 1`` steps, so with its settings the last one is a multiple of
  ``avg_freq`` and averaged too); only trainable parameters are averaged and anchored (the others
  do not change within an experience);
- the training schedule (epochs, lr, warm-up, weight decay) is the cell's ``train`` settings (the
  reference: 1000 iterations of 64 images per task, lr 1e-5, 100 warm-up steps, no weight decay);
  ``we_freq`` counts steps, so set it to about a tenth of an experience's steps (``validate``
  refuses a value that would average only the start weights, the first step's and the last's);
- the new and the reference images go through the image tower in one batch (CLIP has no batch
  statistics, so the result is the same).
"""
from __future__ import annotations

import math
from string import Formatter
from typing import Any, Optional

import lazy_loader as lazy
from pydantic import Field, PositiveInt, field_validator

from clbench import Method, Params, hookimpl, no_grad, to_device
from clbench.datasets import build_dataset, dataset_problem
from clbench.facts import template_problem
from clbench.losses import positions
from clbench.memory import nbytes

from .lwf import distillation

torch = lazy.load("torch")

FORMULA = ("CE_ls(current classes) + image_loss_weight * T^2 KD(z, z0) + text_loss_weight * T^2 KD(z^T, z0^T) + l2_weight * "
           "sum (theta - theta_start)^2; z = s0 f(ref) g0(texts)^T, z0 = s0 f0(ref) g0(texts)^T; weights averaged every "
           "we_freq steps (Thunderbeee/ZSCL mtil/src/models/finetune.py, scripts/ZSCL.sh)")
EXAMPLE = "e.g. reference: {dataset: imagenet1k} (the paper's ImageNet)"


class ZSCLParams(Params):
    reference: Optional[dict[str, Any]] = None  # {dataset: NAME, <its options>}: the images and class names distilled on
    reference_prompt: str = "a photo of a {}."  # the reference texts: each reference class name in this template
    reference_images: Optional[PositiveInt] = None  # draw from a seeded random subset of this many images (null: all)
    reference_batch_size: Optional[PositiveInt] = None  # reference images per step (null: train.batch_size)
    template: int = Field(0, ge=0)  # the stream's prompt template for the cross-entropy's class prompts
    label_smoothing: float = Field(0.2, ge=0.0, lt=1.0)  # ZSCL.sh --ls 0.2
    temperature: float = Field(2.0, gt=0)  # T of both distillation terms (args.py --T)
    image_loss_weight: float = Field(1.0, ge=0)  # each reference image's distribution over the texts (--image_loss)
    text_loss_weight: float = Field(1.0, ge=0)  # each text's distribution over the reference images (--text_loss)
    l2_weight: float = Field(1.0, ge=0)  # summed squared distance to the experience's start weights (--l2 1)
    we: bool = True  # weight ensembling (--we)
    we_freq: PositiveInt = 100  # steps between the weights added to the average (--avg_freq)

    @field_validator("reference_prompt")
    @classmethod
    def _one_slot(cls, prompt: str) -> str:
        if [f for _, f, _, _ in Formatter().parse(prompt) if f is not None] != [""]:
            raise ValueError("must hold exactly one '{}' for the class name, e.g. 'a photo of a {}.'")
        return prompt


def zscl_distillation(student: "torch.Tensor", teacher: "torch.Tensor", temperature: float,
                      image_weight: float = 1.0, text_weight: float = 1.0) -> "torch.Tensor":
    """ZSCL's distillation on (images, texts) logits: image_weight · KD over each row + text_weight · KD over each column.

    KD is the reference's ``distillation``: T² · mean over rows of −Σ softmax(teacher/T) · log softmax(student/T);
    ``student`` and ``teacher`` are (B, N) (B reference images, N texts); the text term is KD of the transposes
    (N rows, a softmax over the B images). A scalar tensor.
    """
    value = student.new_zeros(())
    if image_weight:
        value = value + image_weight * distillation(student, teacher, temperature, t_squared=True)
    if text_weight:
        value = value + text_weight * distillation(student.t(), teacher.t(), temperature, t_squared=True)
    return value


def l2_penalty(weights: dict[str, "torch.Tensor"], anchor: dict[str, "torch.Tensor"]) -> "torch.Tensor":
    """Σ over every tensor of ``weights`` of the summed squared difference to ``anchor``'s tensor of the same name."""
    return sum(((w - anchor[name]) ** 2).sum() for name, w in weights.items())


def add_to_average(average: dict[str, "torch.Tensor"], weights: dict[str, "torch.Tensor"], count: int) -> int:
    """average ← (count · average + weights) / (count + 1), in place, per name (the reference's ``merge_we``); count + 1."""
    for name, avg in average.items():
        avg.add_(weights[name].detach().to(avg.dtype) - avg, alpha=1.0 / (count + 1))
    return count + 1


def fewest_steps(stream, train) -> Optional[int]:
    """The optimisation steps of the stream's smallest experience, from its facts (None when they do not tell)."""
    if stream.train_size is None or not stream.num_classes:
        return None
    if stream.scenario == "domain_incremental":
        images = stream.train_size // max(1, len(stream.domains or ()))
    else:
        images = stream.train_size // stream.num_classes * (stream.num_classes // (stream.steps or 1))
    return train.epochs * math.ceil(images / train.batch_size)


class ZSCL(Method):
    name = "zscl"
    Params = ZSCLParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.teacher = learner.snapshot()  # the initial (zero-shot) model, for the whole cell
        self.reference_set = None  # the reference dataset's training images, built on first use
        self.reference_text = None  # (N, D) the teacher's features of the reference texts
        self.pool = None  # positions in reference_set the batches are drawn from
        self.anchor, self.average, self.count, self.step = {}, {}, 0, 0
        self.averaged: list[int] = []  # how many weights each experience's average holds

    @classmethod
    def check(cls, params, stream, train) -> dict[str, str]:
        reference = params.reference
        if reference is None:
            return {"reference": f"zscl distils on a reference dataset; name one as a stream names its dataset, {EXAMPLE}"}
        if not isinstance(reference.get("dataset"), str):
            return {"reference": f"needs 'dataset': a registered dataset's name, beside that dataset's options; {EXAMPLE}"}
        problem = dataset_problem(reference["dataset"], {k: v for k, v in reference.items() if k != "dataset"})
        if problem:
            key, _, line = problem.partition(": ")
            return {f"reference.{key}" if key else "reference": line}
        problem = template_problem(params.template, stream)
        if problem:
            return {"template": problem}
        steps = fewest_steps(stream, train)
        if params.we and params.we_freq > 1 and steps is not None and steps <= params.we_freq:
            return {"we_freq": f"{params.we_freq} but an experience of stream '{stream.label}' has about {steps} training "
                               f"steps, so the average would hold only the start weights, the first step's and the last's; "
                               f"use about {max(1, steps // 10)} (the reference averages 10 times per experience), or we: false"}
        return {}

    @no_grad
    def _build_reference(self) -> None:
        p, learner = self.params, self.learner
        spec = dict(p.reference)
        name = spec.pop("dataset")
        data = build_dataset(name, spec, image_size=learner.image_size)
        texts = [p.reference_prompt.format(c) for c in data.class_names]
        self.reference_text = torch.cat([self.teacher.encode_texts(texts[i:i + 256]) for i in range(0, len(texts), 256)])
        self.reference_set, n = data.train, len(data.train)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(learner.seed))
        self.pool = order[: p.reference_images].sort().values if p.reference_images and p.reference_images < n else torch.arange(n)

    def _distils(self) -> bool:
        return bool(self.params.image_loss_weight or self.params.text_loss_weight)

    @no_grad
    def before_experience(self, exp) -> None:
        p, learner = self.params, self.learner
        if self._distils() and self.reference_set is None:
            self._build_reference()
        weights = learner.trainable_parameters()
        self.anchor = {k: w.detach().clone() for k, w in weights.items()} if p.l2_weight else {}
        self.average = {k: w.detach().clone() for k, w in weights.items()} if p.we else {}
        self.count, self.step = 1, 0  # the start weights are the average's first member (as the reference's we_model)
        self.generator = torch.Generator().manual_seed(hash((learner.seed, exp.index)) & (2**63 - 1))  # ints hash the same in every run
        self.order, self.cursor = None, 0

    def _reference_images(self, n: int) -> "torch.Tensor":
        """The next ``n`` reference images (uint8), from a shuffle of the pool redrawn when fewer than ``n`` remain."""
        n = min(n, len(self.pool))
        if self.order is None or self.cursor + n > len(self.order):
            self.order, self.cursor = self.pool[torch.randperm(len(self.pool), generator=self.generator)], 0
        index = self.order[self.cursor:self.cursor + n]
        self.cursor += n
        return self.reference_set.load(index)

    def loss(self, batch):
        p, learner = self.params, self.learner
        if p.we and self.step and (self.step - 1) % p.we_freq == 0:  # the weights after step (self.step - 1)
            with torch.no_grad():
                self.count = add_to_average(self.average, learner.trainable_parameters(), self.count)
        self.step += 1
        classes = list(batch.exp.classes)
        features = learner.encode_images(batch.images)  # the whole batch's, also with train.devices > 1
        text = learner.class_features(classes, template=p.template, grad=True)
        logits = learner.logit_scale * features @ text.t()
        targets = positions(to_device(classes, batch.labels.device), batch.labels)
        loss = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=p.label_smoothing)
        if self._distils():
            # every rank draws the same reference batch (same generator) and distils on all of it
            reference = learner.preprocess(self._reference_images(p.reference_batch_size or learner.train_config.batch_size))
            scale = self.teacher.logit_scale
            student = scale * learner.encode_images(reference) @ self.reference_text.t()
            teacher = scale * self.teacher.encode_images(reference) @ self.reference_text.t()
            loss = loss + zscl_distillation(student, teacher, p.temperature, p.image_loss_weight, p.text_loss_weight)
        if p.l2_weight:
            loss = loss + p.l2_weight * l2_penalty(learner.trainable_parameters(), self.anchor)
        return loss

    def train(self, exp) -> None:
        learner = self.learner
        learner.fit(exp, self.loss)
        if not self.params.we:
            return
        with torch.no_grad():
            self.count = add_to_average(self.average, learner.trainable_parameters(), self.count)  # the last step's weights
            for name, weight in learner.trainable_parameters().items():
                weight.copy_(self.average[name])
        learner.weights_changed()  # cached text and image features are stale now
        self.averaged.append(self.count)

    def memory_summary(self):
        summary = {"frozen_models": self.teacher.nbytes}
        if self.anchor:
            summary["parameter_anchors"] = nbytes(self.anchor)
        if self.average:
            summary["weight_average"] = nbytes(self.average)
        return summary

    def state_dict(self):
        return {"averaged": list(self.averaged)}

    def load_state_dict(self, state):
        self.averaged = [int(n) for n in state.get("averaged", [])]

    def record_extras(self):
        p = self.params
        return {"formula": FORMULA, "reference": p.reference, "reference_prompt": p.reference_prompt,
                "reference_texts": None if self.reference_text is None else len(self.reference_text),
                "reference_pool": None if self.pool is None else len(self.pool),
                "temperature": p.temperature, "image_loss_weight": p.image_loss_weight,
                "text_loss_weight": p.text_loss_weight, "l2_weight": p.l2_weight, "label_smoothing": p.label_smoothing,
                "we": p.we, "we_freq": p.we_freq, "weights_averaged": self.averaged,
                "teacher": "frozen snapshot of the initial (zero-shot) model"}


@hookimpl
def clbench_add_methods(register):
    register(ZSCL)

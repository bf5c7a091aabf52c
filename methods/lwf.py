"""lwf: Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017) for CLIP.

From the second experience on, the loss on a batch of new images is

    L = objective(batch) + distill_weight · KD,
    KD = −(1/B) Σ_i Σ_{c ∈ old} softmax(z_old(x_i)/T)_c · log softmax(z(x_i)/T)_c,

where ``objective`` is finetune's (``loss: ce``: cross-entropy over every seen
class's prompt; ``loss: contrastive``: FLYP-style InfoNCE), z(x)_c =
logit_scale · f(x)·g(prompt(c)) is the current model's score for class c over
the OLD classes' prompts (template ``template``), and z_old the same score
from the frozen previous model (``learner.snapshot()`` taken before the
experience, its own logit scale and prompt features). On the first experience
L is finetune's objective. Prediction is CLIP's zero-shot rule.

Reference followed: PyCIL, models/lwf.py (G-U-N/PyCIL): ``loss = loss_clf +
lamda · _KD_loss(logits[:, :known], old_logits, T)`` with ``lamda = 3`` and
``T = 2``, ``_KD_loss`` the soft cross-entropy above (no T² factor). Defaults
here: ``distill_weight = 3.0``, ``temperature = 2.0``,
``distill_t_squared = false``. Other references: the paper uses λ_o = 1,
T = 2 (task-incremental, one head per task); Avalanche's
``LearningWithoutForgetting`` alpha = 1, T = 2 with KL(batchmean), which has the
same gradient as the soft cross-entropy; Mammoth's lwf alpha = 0.5 with its
own ``smooth``/``modified_kl_div`` and a classifier warm-up.

``loss`` defaults to ``ce`` because LwF's classifier is trained with
cross-entropy over class scores (PyCIL, Mammoth, Avalanche and the paper all
do); ``contrastive`` keeps finetune's default objective for a like-for-like
comparison with finetune.

Deliberate differences from PyCIL:

- the classification term is finetune's objective: ``ce`` is over every seen
  class (as Mammoth's lwf, which masks the head to the seen classes), not over
  the new classes only as PyCIL's ``logits[:, known:]``; the "head" is the text
  tower's class prompts, trained too (both towers train, as in finetune);
- no warm-up of the new head (Mammoth) and no separate first-task schedule
  (PyCIL): every experience uses the cell's ``train`` settings;
- ``distill_t_squared: true`` multiplies KD by T² (Hinton et al. 2015), off by
  default as in PyCIL;
- the teacher is snapshotted before each experience after the first and freed
  after it (PyCIL keeps it from ``after_task``): same model, less memory held
  during evaluation; ``distill_weight: 0`` takes no snapshot (lwf = finetune).

Works in both scenarios: in a domain-incremental stream the old classes are
every class and KD spans all of them on the new domain's images.
"""
from __future__ import annotations

from typing import Literal

import lazy_loader as lazy
from pydantic import Field

from clbench import Method, Params, hookimpl, to_device
from clbench.facts import template_problem
from clbench.losses import contrastive_loss, cross_entropy_loss

from .icarl import soft_cross_entropy
from .objective import label_space

torch = lazy.load("torch")

FORMULA = ("objective + distill_weight * KD; KD = -(1/B) sum_i sum_{c in old} softmax(z_old/T)_c log softmax(z/T)_c "
           "over the old classes' prompts on the new images (PyCIL models/lwf.py _KD_loss; lamda=3, T=2)")


class LwFParams(Params):
    loss: Literal["contrastive", "ce"] = "ce"  # finetune's objective on the new data (ce: LwF's classifier loss)
    template: int = Field(0, ge=0)  # which of the dataset's prompt templates builds training and distillation prompts
    distill_weight: float = Field(3.0, ge=0)  # λ_o, PyCIL's lamda
    temperature: float = Field(2.0, gt=0)  # T of the distillation softmax
    distill_t_squared: bool = False  # scale the distillation by T² (default off, as PyCIL)


def distillation(logits: "torch.Tensor", teacher_logits: "torch.Tensor", temperature: float, t_squared: bool = False):
    """PyCIL's ``_KD_loss``: −(1/B) Σ softmax(teacher/T) · log softmax(logits/T), × T² with ``t_squared``; (B, C) in."""
    value = soft_cross_entropy(logits / temperature, teacher_logits / temperature)
    return value * (temperature * temperature) if t_squared else value


class LwF(Method):
    name = "lwf"
    Params = LwFParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.previous = None  # the frozen previous model, held while training an experience after the first
        self.previous_text = None
        self.old_classes: list[int] = []
        self.teacher_bytes = 0

    @classmethod
    def check(cls, params, stream, train) -> dict[str, str]:
        problem = template_problem(params.template, stream)
        return {"template": problem} if problem else {}

    def before_experience(self, exp) -> None:
        if exp.index == 0 or not self.params.distill_weight:
            return
        learner = self.learner
        self.previous = learner.snapshot()
        self.teacher_bytes = max(self.teacher_bytes, self.previous.nbytes)
        self.old_classes = learner.stream.seen(exp.index - 1)
        self.previous_text = self.previous.class_features(self.old_classes, template=self.params.template)

    def loss(self, batch):
        """finetune's objective on ``batch``, plus ``distill_weight`` × KD once a previous model exists.

        The image features and the prompts' text features are computed once for both terms (calling
        ``objective`` and then encoding again for KD would double the image tower's cost); the first
        term is exactly ``objective(learner, batch, loss, template)`` (tests/test_lwf.py checks it).
        """
        p, learner, labels = self.params, self.learner, batch.labels
        space = label_space(learner, batch, p.loss)
        old = self.old_classes if self.previous is not None else []
        in_space = set(space)
        prompts = space + [c for c in old if c not in in_space]
        text = learner.class_features(prompts, template=p.template, grad=True)
        features = learner.encode_images(batch.images)
        fn = contrastive_loss if p.loss == "contrastive" else cross_entropy_loss
        loss = fn(features, labels, text[: len(space)], to_device(space, labels.device), learner.logit_scale)
        if not old:
            return loss
        row = {c: i for i, c in enumerate(prompts)}
        old_text = text[to_device([row[c] for c in old], text.device)]
        current = learner.logit_scale * features @ old_text.t()
        teacher = self.previous.logit_scale * self.previous.encode_images(batch.images) @ self.previous_text.t()
        return loss + p.distill_weight * distillation(current, teacher, p.temperature, p.distill_t_squared)

    def after_experience(self, exp) -> None:
        self.previous = self.previous_text = None  # free the teacher; the next experience snapshots the new model

    def memory_summary(self):
        return {"frozen_models": self.teacher_bytes}

    def state_dict(self):
        return {"teacher_bytes": self.teacher_bytes}

    def load_state_dict(self, state):
        self.teacher_bytes = int(state.get("teacher_bytes", 0))

    def record_extras(self):
        p = self.params
        return {"formula": FORMULA + (" x T^2" if p.distill_t_squared else ""), "loss": p.loss,
                "distill_weight": p.distill_weight, "temperature": p.temperature,
                "distill_t_squared": p.distill_t_squared,
                "teacher": "frozen snapshot of the model before each experience after the first"}


@hookimpl
def clbench_add_methods(register):
    register(LwF)

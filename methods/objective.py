"""finetune's objective on one batch, shared by finetune, er and dro_replay (and reusable by plugins).

``loss: contrastive``: FLYP-style symmetric InfoNCE between the batch's images
and the prompts of the batch's own classes (``clbench.losses.contrastive_loss``);
``loss: ce``: cross-entropy over the prompts of every class seen so far. The
exact formulas are in SPEC.md; ``objective_by_class`` splits the same value into
per-class parts, which dro_replay reweights.
"""
from __future__ import annotations

from dataclasses import dataclass

import lazy_loader as lazy

from clbench import note_contrast, to_device
from clbench.losses import contrastive_loss, contrastive_terms, cross_entropy_loss, positions

torch = lazy.load("torch")


def label_space(learner, batch, loss: str) -> list[int]:
    """The classes a batch is scored against: its own classes (contrastive) or every seen class (ce)."""
    if loss == "contrastive":
        return batch.classes
    return learner.stream.seen(batch.exp.index)


def objective(learner, batch, loss: str = "contrastive", template: int = 0, grad_text: bool = True):
    """finetune's objective (a scalar tensor) on ``batch``: ``contrastive`` or ``ce`` with prompt template ``template``."""
    classes = label_space(learner, batch, loss)
    text = learner.class_features(classes, template=template, grad=grad_text)
    fn = contrastive_loss if loss == "contrastive" else cross_entropy_loss
    labels = batch.labels
    return fn(learner.encode_images(batch.images), labels, text, to_device(classes, labels.device), learner.logit_scale)


@dataclass
class ClassTerms:
    """finetune's objective on one batch, split by class: ``share.sum()`` is the objective itself.

    ``classes`` (C,): the distinct classes of the batch, sorted; ``share`` (C,):
    each class's additive part of the objective (its images' image terms / B,
    plus, for ``contrastive``, its prompt's text term / C, the sum halved);
    ``mean`` (C,): the class's own mean loss (mean of its image terms, averaged
    with its text term for ``contrastive``), the L_c that DRO weights are built from;
    ``mass`` (C,): the class's share of the objective's anchor weight (n_c / B,
    averaged with 1 / C for ``contrastive``; clbench.contrast_stats), summing to 1.
    """

    classes: "torch.Tensor"
    share: "torch.Tensor"
    mean: "torch.Tensor"
    mass: "torch.Tensor"


def objective_by_class(learner, batch, loss: str = "contrastive", template: int = 0, grad_text: bool = True) -> ClassTerms:
    """:func:`objective` decomposed per class (dro_replay reweights these parts; uniform weights give er)."""
    labels = batch.labels
    space = label_space(learner, batch, loss)
    text = learner.class_features(space, template=template, grad=grad_text)
    features = learner.encode_images(batch.images)
    space_t = to_device(space, labels.device)
    present = space_t if loss == "contrastive" else to_device(batch.classes, labels.device)
    if loss == "contrastive":
        image_terms, text_terms = contrastive_terms(features, labels, text, space_t, learner.logit_scale)
    else:
        logits = learner.logit_scale * features @ text.t()
        note_contrast(labels, space_t)
        image_terms = torch.nn.functional.cross_entropy(logits, positions(space_t, labels), reduction="none")
        text_terms = None
    where = positions(present, labels)
    sums = torch.zeros(len(present), dtype=image_terms.dtype, device=labels.device).index_add(0, where, image_terms)
    counts = torch.zeros(len(present), dtype=image_terms.dtype, device=labels.device).index_add(0, where, torch.ones_like(image_terms))
    share, mean, mass = sums / len(labels), sums / counts, counts / len(labels)
    if text_terms is not None:
        share, mean = (share + text_terms / len(present)) / 2, (mean + text_terms) / 2
        mass = (mass + 1 / len(present)) / 2
    return ClassTerms(present, share, mean, mass)

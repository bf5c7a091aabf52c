"""CLIP objectives shared by the built-in methods and reusable by plugins.

All take L2-normalised image features (B, D), the batch's global labels,
text features of a class list (C, D) with those classes' global ids, and
CLIP's logit scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def positions(classes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each label (B,), its index in ``classes`` (C,); every label must be present.

    A (B, C) comparison rather than a lookup table sized by the largest id, so
    the step never waits on the device for that size.
    """
    return (labels[:, None] == classes[None, :]).int().argmax(1)


def contrastive_terms(image_features, labels, text_features, classes, logit_scale) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of :func:`contrastive_loss` before averaging: (image terms (B,), text terms (C,)).

    Image term of x: −log softmax over ``classes``' prompts at x's class; text
    term of prompt c: −log (Σ_{x: y_x = c} e^{s(x,c)} / Σ_x e^{s(x,c)}), every
    image of c's class a positive.
    """
    logits = logit_scale * image_features @ text_features.t()  # (B, C)
    image_terms = F.cross_entropy(logits, positions(classes, labels), reduction="none")
    per_text = logits.t()  # (C, B)
    positive = classes[:, None] == labels[None, :]
    text_terms = torch.logsumexp(per_text, dim=1) - torch.logsumexp(per_text.masked_fill(~positive, float("-inf")), dim=1)
    return image_terms, text_terms


def contrastive_loss(image_features, labels, text_features, classes, logit_scale) -> torch.Tensor:
    """FLYP-style symmetric InfoNCE between images and their class prompts.

    ``classes`` are the distinct classes of the batch, so images of the same
    class share one prompt: image->text is a softmax over those prompts, and
    text->image treats every image of the prompt's class as a positive.
    """
    image_terms, text_terms = contrastive_terms(image_features, labels, text_features, classes, logit_scale)
    return (image_terms.mean() + text_terms.mean()) / 2


def cross_entropy_loss(image_features, labels, text_features, classes, logit_scale) -> torch.Tensor:
    """Cross-entropy over s(x, c) for c in ``classes`` (the seen classes)."""
    logits = logit_scale * image_features @ text_features.t()
    return F.cross_entropy(logits, positions(classes, labels))


def batch_classes(learner, labels: torch.Tensor) -> list[int]:
    """The distinct classes of the batch, sorted, from the Learner's host copy (no device sync)."""
    classes = getattr(learner, "batch_classes", None)
    return (labels.unique() if classes is None else classes).tolist()


def label_space(learner, labels: torch.Tensor, exp, loss: str) -> list[int]:
    """The classes a batch is scored against: its own classes (contrastive) or every seen class (ce)."""
    if loss == "contrastive":
        return batch_classes(learner, labels)
    return learner.stream.seen(exp.index)


def clip_objective(learner, images, labels, exp, loss: str = "contrastive", template: int = 0, grad_text: bool = True):
    """finetune's objective on one (possibly mixed) batch: ``contrastive`` or ``ce``, as in SPEC.md."""
    classes = label_space(learner, labels, exp, loss)
    text = learner.class_features(classes, template=template, grad=grad_text)
    objective = contrastive_loss if loss == "contrastive" else cross_entropy_loss
    return objective(learner.encode_images(images), labels, text, torch.tensor(classes, device=labels.device), learner.logit_scale)


@dataclass
class ClassTerms:
    """finetune's objective on one batch, split by class: ``share.sum()`` is the objective itself.

    ``classes`` (C,): the distinct classes of the batch, sorted; ``share`` (C,):
    each class's additive part of the objective (its images' image terms / B,
    plus, for ``contrastive``, its prompt's text term / C, the sum halved);
    ``mean`` (C,): the class's own mean loss (mean of its image terms, averaged
    with its text term for ``contrastive``), the L_c that DRO weights are built from.
    """

    classes: torch.Tensor
    share: torch.Tensor
    mean: torch.Tensor


def clip_objective_by_class(learner, images, labels, exp, loss: str = "contrastive", template: int = 0,
                            grad_text: bool = True) -> ClassTerms:
    """:func:`clip_objective` decomposed per class (dro_replay reweights these parts; uniform weights give er)."""
    space = label_space(learner, labels, exp, loss)
    text = learner.class_features(space, template=template, grad=grad_text)
    features = learner.encode_images(images)
    space_t = torch.tensor(space, device=labels.device)
    present = space_t if loss == "contrastive" else torch.tensor(batch_classes(learner, labels), device=labels.device)
    if loss == "contrastive":
        image_terms, text_terms = contrastive_terms(features, labels, text, space_t, learner.logit_scale)
    else:
        logits = learner.logit_scale * features @ text.t()
        image_terms, text_terms = F.cross_entropy(logits, positions(space_t, labels), reduction="none"), None
    where = positions(present, labels)
    sums = torch.zeros(len(present), dtype=image_terms.dtype, device=labels.device).index_add(0, where, image_terms)
    counts = torch.zeros(len(present), dtype=image_terms.dtype, device=labels.device).index_add(0, where, torch.ones_like(image_terms))
    share, mean = sums / len(labels), sums / counts
    if text_terms is not None:
        share, mean = (share + text_terms / len(present)) / 2, (mean + text_terms) / 2
    return ClassTerms(present, share, mean)

"""CLIP objectives shared by the built-in methods and reusable by plugins.

All take L2-normalised image features (B, D), the batch's global labels,
text features of a class list (C, D) with those classes' global ids, and
CLIP's logit scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def positions(classes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each label, its index in ``classes`` (every label must be present)."""
    table = torch.full((int(torch.max(classes.max(), labels.max())) + 1,), -1, dtype=torch.long, device=labels.device)
    table[classes] = torch.arange(len(classes), device=labels.device)
    return table[labels]


def contrastive_loss(image_features, labels, text_features, classes, logit_scale) -> torch.Tensor:
    """FLYP-style symmetric InfoNCE between images and their class prompts.

    ``classes`` are the distinct classes of the batch, so images of the same
    class share one prompt: image->text is a softmax over those prompts, and
    text->image treats every image of the prompt's class as a positive.
    """
    logits = logit_scale * image_features @ text_features.t()  # (B, C)
    target = positions(classes, labels)
    image_to_text = F.cross_entropy(logits, target)
    per_text = logits.t()  # (C, B)
    positive = classes[:, None] == labels[None, :]
    text_to_image = torch.logsumexp(per_text, dim=1) - torch.logsumexp(per_text.masked_fill(~positive, float("-inf")), dim=1)
    return (image_to_text + text_to_image.mean()) / 2


def cross_entropy_loss(image_features, labels, text_features, classes, logit_scale) -> torch.Tensor:
    """Cross-entropy over s(x, c) for c in ``classes`` (the seen classes)."""
    logits = logit_scale * image_features @ text_features.t()
    return F.cross_entropy(logits, positions(classes, labels))


def label_space(learner, labels: torch.Tensor, exp, loss: str) -> torch.Tensor:
    """The classes a batch is scored against: its own classes (contrastive) or every seen class (ce)."""
    if loss == "contrastive":
        # the Learner keeps the batch's classes on the host, so this costs no device sync
        classes = getattr(learner, "batch_classes", None)
        return labels.unique() if classes is None else classes.to(labels.device, non_blocking=True)
    return torch.tensor(learner.stream.seen(exp.index), device=labels.device)


def clip_objective(learner, images, labels, exp, loss: str = "contrastive", template: int = 0, grad_text: bool = True):
    """finetune's objective on one (possibly mixed) batch: ``contrastive`` or ``ce``, as in SPEC.md."""
    classes = label_space(learner, labels, exp, loss)
    ids = getattr(learner, "batch_classes", None) if loss == "contrastive" else None
    text = learner.class_features((classes if ids is None else ids).tolist(), template=template, grad=grad_text)
    objective = contrastive_loss if loss == "contrastive" else cross_entropy_loss
    return objective(learner.encode_images(images), labels, text, classes, learner.logit_scale)

"""CLIP objectives on features, reusable by any method (finetune's objective on a Batch, built on these, is
``clbench_methods.objective``, installed with clbench; docs/writing_methods.md section 3.1).

All take L2-normalised image features (B, D), the batch's global labels (B,),
text features of a class list (C, D) with those classes' global ids (C,), and
CLIP's logit scale (a scalar tensor).
"""
from __future__ import annotations

import lazy_loader as lazy

from .contrast_stats import note_contrast

torch = lazy.load("torch")


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
    image of c's class a positive. Inside ``Learner.fit`` it adds to the step's
    effective-negative statistics (contrast_stats.py).
    """
    note_contrast(labels, classes, symmetric=True)
    logits = logit_scale * image_features @ text_features.t()  # (B, C)
    image_terms = torch.nn.functional.cross_entropy(logits, positions(classes, labels), reduction="none")
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
    """Cross-entropy over s(x, c) for c in ``classes`` (the seen classes); noted as contrast_stats.py says."""
    note_contrast(labels, classes)
    logits = logit_scale * image_features @ text_features.t()
    return torch.nn.functional.cross_entropy(logits, positions(classes, labels))

"""Effective negatives and old-class weight mass of a contrastive objective, per class and experience.

While ``Learner.fit`` runs a training step, every call of the shared losses
(``clbench.losses.contrastive_terms`` / ``contrastive_loss`` /
``cross_entropy_loss``) and of :func:`note_contrast` by a method with its own
loss (gcl_replay) tells this step's statistics which images were scored
against which class prompts. Per step and class c:

- **negatives**: the number of the step's images of other classes whose
  score against c's prompt entered the loss: B − n_c when c's prompt is in
  the step's label space (batch-local contrastive loss: only the batch's
  classes; ``ce`` and gcl_replay: every seen class), else 0. A step that
  calls the losses more than once (gdumb's CutMix scores one batch against
  two label sets) counts, per class, its largest call, never a sum.
- **images**: n_c, the step's images of class c (largest call likewise).
- **anchor mass**: c's share of the objective's weight over its anchors,
  with the weights as constants: for the symmetric contrastive loss
  (mean of image terms + mean of text terms) / 2, (n_c / B + 1 / C) / 2 for
  each of the C prompts; for an image-anchored loss (``ce``, gcl_replay)
  n_c / B. A method that reweights classes replaces the step's masses with
  its own through :func:`note_class_mass` (dro_replay: p_c times er's mass for
  KL-DRO, q_c for Group-DRO).

Per experience the record gets, for every class scored, the mean over the
steps of its negatives and images (absent steps count 0) and the number of
steps it was scored in, and the mean over steps of the **old-class weight
mass**: the share of the step's anchor mass on classes seen before the
experience and not taught by it (none in a domain-incremental stream, where
the value is null). Everything is summed on the device; one host sync per
experience reads the sums. Class ids outside the stream's dataset (a plugin scoring another
dataset's classes) are not counted.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Optional

import lazy_loader as lazy

torch = lazy.load("torch")

_active: ContextVar[Optional["ContrastStats"]] = ContextVar("clbench_contrast_stats", default=None)


def note_contrast(labels: "torch.Tensor", prompts: "torch.Tensor", symmetric: bool = False) -> None:
    """Tell the running step that the images of ``labels`` (B,) were scored against the prompts of ``prompts`` (C,).

    ``prompts`` are global class ids (the step's label space; every label among
    them). ``symmetric``: the loss also has one text term per prompt, averaged
    (the shared contrastive loss), which sets the anchor mass to
    (n_c / B + 1 / C) / 2; otherwise n_c / B. Outside ``Learner.fit``'s steps
    (or with no labels) it does nothing. Never waits on the device.
    """
    stats = _active.get()
    if stats is not None and len(labels):
        stats.add(labels, prompts, symmetric)


def note_class_mass(classes: "torch.Tensor", mass: "torch.Tensor") -> None:
    """Replace this step's anchor masses by a reweighting method's own: ``mass`` (C,) on ``classes`` (C,), ≥ 0.

    For example dro_replay's KL-DRO passes p_c · (er's mass of c). Only the
    ratios matter (the old-class share is normalised). Outside ``fit`` it does nothing.
    """
    stats = _active.get()
    if stats is not None:
        stats.set_mass(classes, mass)


class ContrastStats:
    """Sums over one experience's steps, on ``device``, for ``num_classes`` global class ids."""

    def __init__(self, num_classes: int, device):
        self.num_classes, self.device = num_classes, device
        zeros = lambda: torch.zeros(num_classes, device=device)  # noqa: E731
        self.negatives, self.images, self.scored = zeros(), zeros(), zeros()
        self.step_negatives, self.step_images, self.step_scored = zeros(), zeros(), zeros()  # this step's, max over calls
        self.step_mass, self.override = zeros(), None
        self.old = torch.zeros(num_classes, dtype=torch.bool, device=device)
        self.old_mass = torch.zeros((), device=device)
        self.steps = 0  # steps in which something was noted (host-side count)
        self.noted = False
        self.history: list[Optional[dict]] = []
        self.complete = True  # False after resuming from a checkpoint that kept no statistics

    def begin_experience(self, old_classes: list[int]) -> None:
        """Start a fresh sum for an experience whose old classes are ``old_classes``."""
        for t in (self.negatives, self.images, self.scored):
            t.zero_()
        self.old_mass.zero_()
        self.old = torch.zeros(self.num_classes, dtype=torch.bool)
        self.old[list(old_classes)] = True
        self.old = self.old.to(self.device)
        self.has_old = bool(old_classes)
        self.steps = 0

    @contextlib.contextmanager
    def step(self):
        """The span of one training step: notes made inside it count for this step."""
        for t in (self.step_mass, self.step_negatives, self.step_images, self.step_scored):
            t.zero_()
        self.override, self.noted = None, False
        token = _active.set(self)
        try:
            yield
        finally:
            _active.reset(token)
        if self.noted:
            mass = self.step_mass if self.override is None else self.override
            self.old_mass += (mass * self.old).sum() / mass.sum().clamp(min=torch.finfo(mass.dtype).tiny)
            self.negatives += self.step_negatives
            self.images += self.step_images
            self.scored += self.step_scored
            self.steps += 1

    def add(self, labels, prompts, symmetric: bool) -> None:
        labels, prompts = labels.detach().to(self.device), prompts.detach().to(self.device)
        B, C = len(labels), len(prompts)
        n = (prompts[:, None] == labels[None, :]).sum(1).float()  # (C,) images of each prompt's class
        known = (prompts >= 0) & (prompts < self.num_classes)  # masked, not filtered: no host sync
        index, keep = torch.where(known, prompts, 0), known.float()

        def dense(values):
            return torch.zeros(self.num_classes, device=self.device).index_add_(0, index, values * keep)

        torch.maximum(self.step_negatives, dense(B - n), out=self.step_negatives)
        torch.maximum(self.step_images, dense(n), out=self.step_images)
        torch.maximum(self.step_scored, dense(torch.ones_like(n)), out=self.step_scored)
        self.step_mass += dense((n / B + 1 / C) / 2 if symmetric else n / B)
        self.noted = True

    def set_mass(self, classes, mass) -> None:
        classes = classes.detach().to(self.device)
        known = (classes >= 0) & (classes < self.num_classes)
        override = torch.zeros(self.num_classes, device=self.device)
        self.override = override.index_add_(0, torch.where(known, classes, 0), mass.detach().float().to(self.device) * known)

    def end_experience(self, index: int) -> Optional[dict]:
        """The experience's summary (appended to ``history``), or None when nothing was noted (reads the sums
        from the device once per experience)."""
        if not self.steps:
            self.history.append(None)
            return None
        steps = self.steps
        scored = self.scored.nonzero().flatten()
        negatives = (self.negatives[scored] / steps).tolist()
        images = (self.images[scored] / steps).tolist()
        counts = self.scored[scored].tolist()
        classes = scored.tolist()
        old = self.old.cpu()
        by_class = {str(c): {"negatives": round(neg, 4), "images": round(img, 4), "steps_scored": int(k)}
                    for c, neg, img, k in zip(classes, negatives, images, counts)}
        old_negatives = [neg for c, neg in zip(classes, negatives) if old[c]]
        new_negatives = [neg for c, neg in zip(classes, negatives) if not old[c]]
        n_old = int(old.sum())  # old classes never scored saw 0 negatives
        summary = {
            "experience": index, "steps": steps,
            "old_class_mass": round(float(self.old_mass) / steps, 6) if self.has_old else None,
            "negatives_old": round(sum(old_negatives) / n_old, 4) if n_old else None,
            "negatives_new": round(sum(new_negatives) / len(new_negatives), 4) if new_negatives else None,
            "classes": by_class,
        }
        self.history.append(summary)
        return summary

    def record(self) -> Optional[list]:
        """The record's ``contrast`` entry: one summary per experience, or None when no step was noted."""
        if not self.complete:
            return None
        return self.history if any(h is not None for h in self.history) else None

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: Optional[dict]) -> None:
        """Restore :meth:`state_dict`'s output; ``None`` (a checkpoint from before these statistics were kept)
        makes the record's ``contrast`` null rather than a list missing its first experiences."""
        self.history = list(state["history"]) if state else []
        self.complete = state is not None

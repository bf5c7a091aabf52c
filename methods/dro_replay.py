"""dro_replay: replay with distributionally robust reweighting over classes (the paper's method).

Per-sample losses (image-to-prompt cross-entropy over the batch's classes, or
over all seen classes with ``loss: ce``) are averaged per class; ``update: kl``
(default) reweights classes by KL-DRO with a moving-average normaliser
(λ = ``lam``, γ = ``gamma``), ``update: eg`` by Group-DRO's exponentiated
gradient (η = ``eta``). See clbench/dro.py for the formulas. The class
weights after each experience go into the record.
"""
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from clbench import hookimpl
from clbench.dro import GroupDRO, KLDRO, per_class_mean
from clbench.losses import label_space, positions
from clbench.replay import ReplayMethod, ReplayParams


class DROParams(ReplayParams):
    update: Literal["kl", "eg"] = "kl"
    lam: float = Field(1.0, gt=0)  # KL-DRO temperature λ
    gamma: float = Field(0.9, gt=0, le=1)  # moving-average rate γ of the normaliser
    eta: float = Field(0.01, gt=0)  # Group-DRO step size η


class DROReplay(ReplayMethod):
    name = "dro_replay"
    Params = DROParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.kl = KLDRO(params.lam, params.gamma)
        self.eg = GroupDRO(params.eta)
        # moving average of each class's loss, for the record; kept on the device so steps never sync
        n = learner.dataset.num_classes
        self.class_loss = torch.zeros(n, device=learner.device)
        self.class_seen = torch.zeros(n, dtype=torch.bool, device=learner.device)
        self.history: list[dict] = []

    def loss(self, images, labels, exp):
        learner = self.learner
        classes = label_space(learner, labels, exp, self.params.loss)
        text = learner.class_features(classes.tolist(), template=self.params.template, grad=True)
        logits = learner.logit_scale * learner.encode_images(images) @ text.t()
        per_sample = F.cross_entropy(logits, positions(classes, labels), reduction="none")
        present, class_losses = per_class_mean(per_sample, labels)
        self._track(present, class_losses)
        if self.params.update == "eg":
            return self.eg.loss(present, class_losses)
        return self.kl.loss(class_losses)

    def _track(self, classes, class_losses) -> None:
        g, loss = self.params.gamma, class_losses.detach().float()
        old = self.class_loss[classes]
        self.class_loss[classes] = torch.where(self.class_seen[classes], (1 - g) * old + g * loss, loss)
        self.class_seen[classes] = True

    def class_weights(self) -> dict[int, float]:
        """The weight each seen class gets now: softmax(L̄/λ) (kl) or q (eg)."""
        if self.params.update == "eg":
            return self.eg.weights()
        classes = self.class_seen.nonzero().flatten()
        if not len(classes):
            return {}
        weights = torch.softmax(self.class_loss[classes] / self.params.lam, 0)
        return dict(zip(classes.tolist(), weights.tolist()))

    def after_experience(self, exp) -> None:
        super().after_experience(exp)
        self.history.append({"experience": exp.index, "weights": {str(c): round(w, 6) for c, w in sorted(self.class_weights().items())}})

    def state_dict(self):
        return {**super().state_dict(), "log_u": self.kl.log_u, "log_q": dict(self.eg.log_q),
                "class_loss": self.class_loss, "class_seen": self.class_seen, "history": self.history}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.kl.log_u, self.eg.log_q = state["log_u"], dict(state["log_q"])
        self.class_loss = state["class_loss"].to(self.learner.device)
        self.class_seen = state["class_seen"].to(self.learner.device)
        self.history = list(state["history"])

    def record_extras(self):
        return {"formula": "kl-dro moving-average normaliser" if self.params.update == "kl" else "group-dro exponentiated gradient",
                "class_weights": self.history}


@hookimpl
def clbench_add_methods(register):
    register(DROReplay)

"""dro_replay: replay with distributionally robust reweighting over classes (the paper's method).

The objective is er's (``loss: contrastive`` or ``ce`` on the mixed batch),
split into per-class parts; only the weights of those parts differ from er:

- ``update: kl`` (default): KL-DRO with a moving-average normaliser (λ =
  ``lam``, γ = ``gamma``): weight p_c = exp(L_c/λ)/u on class c's part;
- ``update: eg``: Group-DRO's exponentiated gradient (η = ``eta``): loss
  Σ_c q_c·L_c with q over every seen class;
- ``update: uniform``: every weight 1, i.e. exactly er (the ablation).

See dro.py next to this file for the formulas. The record's ``method_state.class_weights``
holds, per experience, each class's weight as applied in training: the mean
over the steps whose batch held the class (p_c for kl, q_c for eg, 1 for
uniform), with the number of those steps.
"""
from __future__ import annotations

from typing import Literal

import lazy_loader as lazy
from pydantic import Field

from clbench import hookimpl, note_class_mass, to_device
from clbench.replay import ReplayMethod, ReplayParams

from .dro import GroupDRO, KLDRO
from .objective import objective, objective_by_class

torch = lazy.load("torch")

FORMULAS = {
    "kl": "kl-dro: weight exp(L_c/lam)/u on class c's part of er's loss, u a moving average (LibAUC)",
    "eg": "group-dro: sum_c q_c L_c, q exponentiated-gradient weights over seen classes (Sagawa et al. 2020)",
    "uniform": "uniform: er's loss, every class weight 1",
}


class DROParams(ReplayParams):
    update: Literal["kl", "eg", "uniform"] = "kl"
    lam: float = Field(1.0, gt=0)  # KL-DRO temperature λ
    gamma: float = Field(0.9, gt=0, le=1)  # moving-average rate γ of the normaliser
    eta: float = Field(0.01, gt=0)  # Group-DRO step size η


class DROReplay(ReplayMethod):
    name = "dro_replay"
    Params = DROParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        n = learner.dataset.num_classes
        self.kl = KLDRO(params.lam, params.gamma)
        self.eg = GroupDRO(n, params.eta, learner.device)
        # weights applied during the current experience, summed per class, on the device (no per-step sync)
        self.applied = torch.zeros(n, device=learner.device)
        self.steps = torch.zeros(n, device=learner.device)
        self.history: list[dict] = []

    def before_experience(self, exp) -> None:
        if self.params.update == "eg":
            self.eg.add_classes(self.learner.stream.seen(exp.index))

    def loss(self, batch):
        p, learner = self.params, self.learner
        if p.update == "uniform":
            loss = objective(learner, batch, p.loss, p.template)
            classes = to_device(batch.classes, batch.labels.device)
            self._track(classes, torch.ones(len(classes), device=batch.labels.device))
            return loss
        terms = objective_by_class(learner, batch, p.loss, p.template)
        if p.update == "eg":  # Σ q_c L_c: class c's anchors weigh q_c in all
            loss, weights = self.eg.loss(terms.classes, terms.mean)
            note_class_mass(terms.classes, weights)
        else:  # Σ p_c ∇share_c: er's anchor mass of c times p_c
            loss, weights = self.kl.loss(terms.mean, terms.share)
            note_class_mass(terms.classes, weights * terms.mass)
        self._track(terms.classes, weights)
        return loss

    def _track(self, classes, weights) -> None:
        self.applied.index_add_(0, classes, weights.detach().float())
        self.steps.index_add_(0, classes, torch.ones_like(weights, dtype=torch.float32))

    def after_experience(self, exp) -> None:
        super().after_experience(exp)
        present = self.steps.nonzero().flatten()
        means = (self.applied[present] / self.steps[present]).tolist()  # one sync per experience
        self.history.append({"experience": exp.index,
                             "weights": {str(c): round(w, 6) for c, w in zip(present.tolist(), means)},
                             "steps": {str(c): int(n) for c, n in zip(present.tolist(), self.steps[present].tolist())}})
        self.applied.zero_()
        self.steps.zero_()

    def state_dict(self):
        return {**super().state_dict(), "kl": self.kl.state_dict(), "eg": self.eg.state_dict(),
                "applied": self.applied, "steps": self.steps, "history": self.history}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.kl.load_state_dict(state["kl"], self.learner.device)
        self.eg.load_state_dict(state["eg"])
        self.applied = state["applied"].to(self.learner.device)
        self.steps = state["steps"].to(self.learner.device)
        self.history = list(state["history"])

    def record_extras(self):
        return {"formula": FORMULAS[self.params.update], "class_weights": self.history,
                "class_weights_meaning": "per experience: each class's mean weight over the training steps whose batch "
                                         "held it, and the number of those steps"}


@hookimpl
def clbench_add_methods(register):
    register(DROReplay)

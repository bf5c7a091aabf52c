"""Distributionally robust reweighting over classes (the objective dro_replay optimises).

KL-DRO: the objective λ·log mean_c exp(L_c/λ) over the classes c of a batch,
whose gradient is Σ_c softmax(L/λ)_c ∇L_c. With mini-batches the normaliser
mean_c exp(L_c/λ) is tracked by a moving average (LibAUC's estimator),
u ← (1−γ)·u + γ·mean_c exp(L_c/λ), kept in log space so large losses cannot
overflow; weights p_c = exp(L_c/λ)/u are detached and the step minimises
Σ_c p_c·L_c / |classes in B|. With γ = 1 this is the exact batch objective.

Group-DRO (Sagawa et al. 2020): exponentiated-gradient class weights
q_c ← q_c·exp(η·L_c), renormalised over the seen classes; the step minimises
Σ_c q_c·L_c / Σ_c q_c over the classes of the batch.
"""
from __future__ import annotations

import math

import torch


def per_class_mean(per_sample: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes present, mean loss of each) from per-sample losses."""
    classes, inverse = labels.unique(return_inverse=True)
    sums = torch.zeros(len(classes), dtype=per_sample.dtype, device=per_sample.device).index_add(0, inverse, per_sample)
    counts = torch.bincount(inverse, minlength=len(classes)).to(per_sample.dtype)
    return classes, sums / counts


class KLDRO:
    def __init__(self, lam: float = 1.0, gamma: float = 0.9):
        self.lam, self.gamma = lam, gamma
        self.log_u: torch.Tensor | None = None  # log of the moving-average normaliser

    def update_normaliser(self, class_losses: torch.Tensor) -> torch.Tensor:
        z = class_losses.detach() / self.lam
        log_g = torch.logsumexp(z, 0) - math.log(len(z))  # log mean_c exp(L_c/λ)
        if self.log_u is None or self.gamma >= 1:
            self.log_u = log_g
        else:
            self.log_u = torch.logaddexp(math.log(1 - self.gamma) + self.log_u, math.log(self.gamma) + log_g)
        return log_g

    def weights(self, class_losses: torch.Tensor) -> torch.Tensor:
        """p_c = exp(L_c/λ) / u, after folding this batch into u."""
        self.update_normaliser(class_losses)
        return torch.exp(class_losses.detach() / self.lam - self.log_u)

    def loss(self, class_losses: torch.Tensor) -> torch.Tensor:
        """Value: the batch estimate λ·log mean_c exp(L_c/λ); gradient: Σ_c p_c ∇L_c / |classes|."""
        log_g = self.update_normaliser(class_losses)
        p = torch.exp(class_losses.detach() / self.lam - self.log_u)
        step = (p * class_losses).sum() / len(class_losses)
        return self.lam * log_g + (step - step.detach())

    def state_dict(self) -> dict:
        return {"log_u": None if self.log_u is None else float(self.log_u)}


class GroupDRO:
    def __init__(self, eta: float = 0.01):
        self.eta = eta
        self.log_q: dict[int, float] = {}

    def add_classes(self, classes) -> None:
        """New classes join with the mean weight of the current ones (uniform at the start)."""
        new = [int(c) for c in classes if int(c) not in self.log_q]
        if not new:
            return
        start = math.log(sum(math.exp(v) for v in self.log_q.values()) / len(self.log_q)) if self.log_q else 0.0
        self.log_q.update({c: start for c in new})
        self._normalise()

    def _normalise(self) -> None:
        norm = math.log(sum(math.exp(v) for v in self.log_q.values()))
        self.log_q = {c: v - norm for c, v in self.log_q.items()}

    def update(self, classes: torch.Tensor, class_losses: torch.Tensor) -> None:
        self.add_classes(classes.tolist())
        for c, loss in zip(classes.tolist(), class_losses.detach().tolist()):
            self.log_q[c] += self.eta * loss
        self._normalise()

    def loss(self, classes: torch.Tensor, class_losses: torch.Tensor) -> torch.Tensor:
        self.update(classes, class_losses)
        q = torch.tensor([math.exp(self.log_q[c]) for c in classes.tolist()], dtype=class_losses.dtype, device=class_losses.device)
        return (q * class_losses).sum() / q.sum()

    def weights(self) -> dict[int, float]:
        return {c: math.exp(v) for c, v in sorted(self.log_q.items())}

"""Distributionally robust reweighting over classes (the objectives dro_replay optimises).

Both estimators reweight the per-class parts of the very objective ``er``
minimises (objective.objective_by_class next to this file): ``share_c`` is class c's
additive part of er's loss on the batch (Σ_c share_c = er's loss) and ``L_c``
is the class's own mean loss on the batch.

KL-DRO (the KL-regularised DRO objective λ·log mean_c exp(L_c/λ), estimated as
LibAUC's KL-DRO losses do): the normaliser mean_c exp(L_c/λ) over the batch's
classes is tracked by a moving average u ← (1−γ)·u + γ·mean_c exp(L_c/λ) (the
first batch sets u; kept in log space so large losses cannot overflow); the
detached weights p_c = exp(L_c/λ)/u multiply the class shares, so the step
follows Σ_c p_c ∇share_c. For a class-balanced batch share_c = L_c/|C| and this
is SPEC.md's Σ_c p_c·L_c / |classes in B|; with every p_c = 1 it is exactly er.
At γ = 1 and a balanced batch the gradient is that of λ·log mean_c exp(L_c/λ).

Group-DRO (Sagawa et al. 2020, kohpangwei/group_DRO ``compute_robust_loss``):
exponentiated-gradient weights over every seen class, q_c ← q_c·exp(η·L_c)
(L_c = 0 for a class absent from the batch), renormalised to sum to 1, then the
loss Σ_c q_c·L_c over the classes of the batch (absent classes contribute 0;
no renormalisation over the batch). Classes join when they are first seen, with
the mean weight of the classes already there (Sagawa's groups all exist from
the start; a stream's classes arrive over time).
"""
from __future__ import annotations

import math

import lazy_loader as lazy

torch = lazy.load("torch")  # imported on first use: validate never loads it


class KLDRO:
    """KL-DRO over classes with a moving-average normaliser; ``lam`` λ > 0, ``gamma`` γ in (0, 1]."""

    def __init__(self, lam: float = 1.0, gamma: float = 0.9):
        self.lam, self.gamma = lam, gamma
        self.log_u: torch.Tensor | None = None  # log of the moving-average normaliser

    def update_normaliser(self, class_losses: torch.Tensor) -> torch.Tensor:
        """Fold this batch's mean_c exp(L_c/λ) into u; returns the batch's log mean_c exp(L_c/λ)."""
        z = class_losses.detach().float() / self.lam
        log_g = torch.logsumexp(z, 0) - math.log(len(z))
        if self.log_u is None or self.gamma >= 1:
            self.log_u = log_g
        else:
            self.log_u = torch.logaddexp(math.log(1 - self.gamma) + self.log_u, math.log(self.gamma) + log_g)
        return log_g

    def weights(self, class_losses: torch.Tensor) -> torch.Tensor:
        """p_c = exp(L_c/λ) / u (C,), after folding this batch into u."""
        self.update_normaliser(class_losses)
        return torch.exp(class_losses.detach().float() / self.lam - self.log_u)

    def loss(self, class_losses: torch.Tensor, shares: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, weights applied). Value: the batch estimate λ·log mean_c exp(L_c/λ); gradient: Σ_c p_c ∇share_c.

        ``class_losses`` (C,) the L_c; ``shares`` (C,) the parts of er's loss
        (default L_c / C, SPEC.md's formula).
        """
        log_g = self.update_normaliser(class_losses)
        p = torch.exp(class_losses.detach().float() / self.lam - self.log_u)
        shares = class_losses / len(class_losses) if shares is None else shares
        step = (p * shares).sum()
        return self.lam * log_g + (step - step.detach()), p

    def state_dict(self) -> dict:
        return {"log_u": None if self.log_u is None else self.log_u.detach().cpu()}

    def load_state_dict(self, state: dict, device=None) -> None:
        log_u = state["log_u"]
        self.log_u = None if log_u is None else torch.as_tensor(log_u, dtype=torch.float32, device=device)


class GroupDRO:
    """Group-DRO's exponentiated-gradient class weights; ``num_classes`` the dataset's, ``eta`` η > 0."""

    def __init__(self, num_classes: int, eta: float = 0.01, device=None):
        self.eta = eta
        self.log_q = torch.full((num_classes,), float("-inf"), device=device)  # -inf: not a seen class yet

    def add_classes(self, classes: list[int]) -> None:
        """Seen classes join with the mean weight of those already there (uniform at the start); once per experience."""
        joined = torch.isfinite(self.log_q)
        host = joined.cpu()
        new = torch.tensor([c for c in classes if not host[c]], dtype=torch.long, device=self.log_q.device)
        if not len(new):
            return
        n = int(host.sum())
        start = (torch.logsumexp(self.log_q[joined], 0) - math.log(n)) if n else torch.zeros((), device=self.log_q.device)
        self.log_q[new] = start
        self._normalise()

    def _normalise(self) -> None:
        self.log_q -= torch.logsumexp(self.log_q, 0)  # -inf entries stay -inf

    def update(self, classes: torch.Tensor, class_losses: torch.Tensor) -> torch.Tensor:
        """q_c ← q_c·exp(η·L_c) for the batch's ``classes`` (C,), renormalised; returns q of those classes (C,)."""
        self.log_q[classes] += self.eta * class_losses.detach().float()
        self._normalise()
        return torch.exp(self.log_q[classes])

    def loss(self, classes: torch.Tensor, class_losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ_c q_c·L_c over the batch's classes after the update, the q applied)."""
        q = self.update(classes, class_losses)
        return (q * class_losses).sum(), q

    def weights(self) -> dict[int, float]:
        """q_c of every seen class (host floats; a sync, for records)."""
        joined = torch.isfinite(self.log_q).nonzero().flatten()
        return dict(zip(joined.tolist(), torch.exp(self.log_q[joined]).tolist()))

    def state_dict(self) -> dict:
        return {"log_q": self.log_q.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.log_q = state["log_q"].to(self.log_q.device)

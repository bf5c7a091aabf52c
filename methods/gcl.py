"""A global contrastive loss over the seen classes, estimated per anchor as SogCLR does (the objective of gcl_replay).

Notation: s(x, c) = logit_scale · f(x)·g(c), f and g L2-normalised image and
class-prompt features. The objective has two halves, averaged:

- image anchors: each image x against every seen class prompt, the
  cross-entropy −log softmax_c s(x, c) at its label (exact: all prompts are
  in every step);
- text anchors: each image a of the batch defines the pair (a, c_a), c_a its
  class, and the anchor's term is log E_{x: y_x ≠ c_a} exp(s(x, c_a) − s(a, c_a)),
  the mean over the images of other classes (its negatives) in the whole
  training data — the bimodal global contrastive loss of Yuan et al. 2022
  ("Provable stochastic optimization for global contrastive learning",
  SogCLR; LibAUC's ``GCLoss_v2``; FastCLIP).

A mini-batch sees only some negatives, so each anchor a keeps a moving average
of its inner mean, indexed by the image's dataset id (new and replayed images
alike): u_a ← (1 − γ)·u_a + γ·g_a with g_a = mean over the batch's negatives of
exp(s(x, c_a) − s(a, c_a)); the first visit sets u_a = g_a (LibAUC's
initialisation). The step follows the gradient Σ_x w_{a,x} ∇(s(x, c_a) − s(a, c_a))
/ n_a with the detached weights w_{a,x} = exp(s(x, c_a) − s(a, c_a)) / u_a, so
each anchor's weights depend on its own history only, and several images of one
class are separate anchors whose terms are averaged (never pooled into one
normaliser). The value reported is the batch estimate mean_a log g_a. At γ = 1
value and gradient equal those of the exact loss on the batch.

Everything is vectorised and stays on the device: no per-class loop, no sync.
"""
from __future__ import annotations

import math

import lazy_loader as lazy

from clbench import to_device
from clbench.losses import positions

torch = lazy.load("torch")  # imported on first use: validate never loads it


class GlobalContrastive:
    """Per-anchor moving-average estimator of the global contrastive loss.

    ``num_ids``: how many dataset ids exist (the training split's size);
    ``gamma`` in (0, 1]: the moving-average rate γ.
    """

    def __init__(self, num_ids: int, gamma: float = 0.9, device: torch.device | str = "cpu"):
        if not 0 < gamma <= 1:
            raise ValueError("gamma must be in (0, 1]")
        self.gamma = gamma
        # log u_a per dataset id; -inf marks an anchor not visited yet
        self.log_u = torch.full((num_ids,), float("-inf"), device=device)

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor,
             text_features: torch.Tensor, seen: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """The step's loss (a scalar whose gradient is the estimator's).

        ``image_features`` (B, D) and ``text_features`` (S, D) L2-normalised;
        ``labels`` (B,) global class ids, each in ``seen`` (S,); ``ids`` (B,)
        the images' dataset ids (each < num_ids); ``logit_scale`` a scalar.
        """
        logits = logit_scale * image_features @ text_features.t()  # (B, S): s(x, c)
        column = positions(seen, labels)  # (B,): each image's class column
        image_loss = torch.nn.functional.cross_entropy(logits.float(), column)
        return (image_loss + self.text_term(logits, column, labels, ids)) / 2

    def text_term(self, logits: torch.Tensor, column: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Mean over the text anchors (one per image with a negative in the batch) of their estimated terms.

        ``logits`` (B, S): s(x, c); ``column`` (B,): each image's class column;
        ``labels``, ``ids`` (B,). Updates u for the anchors' ids.
        """
        pair = logits.float()[:, column]  # (B_x, B_a): s(x, c_a)
        h = pair - pair.diagonal()[None, :]  # s(x, c_a) − s(a, c_a)
        negative = labels[:, None] != labels[None, :]  # x is a negative of anchor a
        n_neg = negative.sum(0)  # (B_a,)
        has_neg = n_neg > 0
        h_d = h.detach().masked_fill(~negative, float("-inf"))
        log_g = torch.logsumexp(h_d, 0) - n_neg.clamp(min=1).log()  # log of the batch mean over negatives

        ids = to_device(ids, self.log_u.device)  # dataset ids come from the host
        old = self.log_u[ids]
        if self.gamma >= 1:
            log_u = log_g
        else:
            mixed = torch.logaddexp(math.log(1 - self.gamma) + old, math.log(self.gamma) + log_g)
            log_u = torch.where(torch.isinf(old), log_g, mixed)
        log_u = torch.where(has_neg, log_u, old)  # an anchor without negatives keeps its estimate
        self.log_u[ids] = log_u

        weights = torch.where(negative, torch.exp(h_d - log_u[None, :]), 0.0) / n_neg.clamp(min=1)
        step = (weights * h).sum(0)  # (B_a,): carries the anchor's gradient, value 0 after detaching
        per_anchor = torch.where(has_neg, log_g + (step - step.detach()), 0.0)
        return per_anchor.sum() / has_neg.sum().clamp(min=1)

    def state_dict(self) -> dict:
        return {"log_u": self.log_u.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.log_u = state["log_u"].to(self.log_u.device)

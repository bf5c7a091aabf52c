"""A global contrastive loss over seen classes, estimated with per-class moving averages (SogCLR-style).

Image anchors: a softmax over every seen class prompt (exact and cheap).
Text anchors (a class prompt c): the normaliser over images of other classes,
g_c = mean over positives x⁺ (label c) and negatives x (label ≠ c) of
exp(s(x,c) − s(x⁺,c)), is tracked as u_c ← (1−γ)·u_c + γ·g_c (log space,
initialised to the first batch's g_c), and the step uses the detached
weights exp(s(x,c) − s(x⁺,c))/u_c, i.e. the gradient of log u_c. The value
reported is the batch estimate log g_c, so with γ = 1 value and gradient
both equal the exact global loss on the batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .losses import positions


class GlobalContrastive:
    def __init__(self, gamma: float = 0.9):
        self.gamma = gamma
        self.log_u: dict[int, torch.Tensor] = {}

    def _update(self, c: int, log_g: torch.Tensor) -> torch.Tensor:
        if c not in self.log_u or self.gamma >= 1:
            self.log_u[c] = log_g
        else:
            self.log_u[c] = torch.logaddexp(math.log(1 - self.gamma) + self.log_u[c], math.log(self.gamma) + log_g)
        return self.log_u[c]

    def loss(self, image_features, labels, text_features, seen, logit_scale) -> torch.Tensor:
        """``text_features`` (S, D) of the seen classes ``seen`` (S,); every label must be seen."""
        logits = logit_scale * image_features @ text_features.t()  # (B, S): s(x, c)
        image_loss = F.cross_entropy(logits, positions(seen, labels))
        text_losses = []
        for c in labels.unique().tolist():
            column = logits[:, int((seen == c).nonzero()[0, 0])]
            positive = labels == c
            if positive.all():
                continue  # no negatives in the batch for this prompt
            h = column[~positive][None, :] - column[positive][:, None]  # (P, N): s(x,c) − s(x⁺,c)
            log_g = torch.logsumexp(h.detach().flatten(), 0) - math.log(h.numel())
            log_u = self._update(c, log_g)
            step = (torch.exp(h.detach() - log_u) * h).mean()
            text_losses.append(log_g + (step - step.detach()))
        if not text_losses:
            return image_loss
        return (image_loss + torch.stack(text_losses).mean()) / 2

    def state_dict(self) -> dict:
        return {"log_u": {c: float(v) for c, v in self.log_u.items()}}

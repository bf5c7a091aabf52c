"""wise_ft: fine-tune on each experience, then interpolate every weight with the zero-shot model (WiSE-FT).

Reference: Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022;
code mlfoundations/wise-ft, src/wise_ft.py (``theta = (1-alpha)*theta_0 +
alpha*theta_1`` over every key of the two state dicts, theta_0 the zero-shot
model, theta_1 the fine-tuned one; the paper's main result uses alpha = 0.5).

Here, per experience: train with finetune's objective (``loss``, ``template``,
``freeze_text`` as finetune), then, after training and before evaluation, set
every floating-point weight and buffer

    θ ← (1 − α)·θ_0 + α·θ_ft,        α = ``alpha`` (default 0.5)

with θ_0 the cell's initial (zero-shot) weights, saved in ``__init__``, and
θ_ft the weights fine-tuned on this experience. The paper's convention: α is the
weight of the **fine-tuned** model (α = 0 is zero-shot, α = 1 is finetune).
Non-floating entries (integer buffers) are left as they are.

Deliberate differences from the reference: the reference fine-tunes once and
interpolates once; a stream has several experiences, so the interpolation is
applied after each of them, and the next experience's fine-tuning starts from
the interpolated weights (θ_0 stays the initial model throughout). The
reference fine-tunes an image encoder with a frozen zero-shot head; here both
towers train unless ``freeze_text`` (finetune's objective).

Memory: the θ_0 copy (floating weights only) is reported as ``frozen_models``.
Resuming needs no state: ``__init__`` always sees the initial weights.
"""
from __future__ import annotations

import lazy_loader as lazy
from pydantic import Field

from clbench import hookimpl, no_grad
from clbench.memory import nbytes

from .finetune import Finetune, FinetuneParams

torch = lazy.load("torch")


FORMULA = "theta <- (1 - alpha) * theta_0 + alpha * theta_ft after each experience (theta_0: initial zero-shot weights; alpha: weight of the fine-tuned model, Wortsman et al. 2022)"


class WiseFTParams(FinetuneParams):
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # weight of the fine-tuned model in the interpolation (paper's α)


class WiseFT(Finetune):
    name = "wise_ft"
    Params = WiseFTParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.zero_shot = {k: v.detach().clone() for k, v in learner.weights().items() if v.is_floating_point()}

    @no_grad
    def after_experience(self, exp) -> None:
        alpha = self.params.alpha
        for name, weight in self.learner.weights().items():
            if name in self.zero_shot and weight.is_floating_point():
                theta_0 = self.zero_shot[name].to(device=weight.device, dtype=weight.dtype)
                weight.mul_(alpha).add_(theta_0, alpha=1.0 - alpha)
        self.learner.weights_changed()  # cached text and image features are stale now

    def record_extras(self):
        return {"alpha": self.params.alpha, "formula": FORMULA}

    def memory_summary(self):
        return {"frozen_models": nbytes(self.zero_shot)}


@hookimpl
def clbench_add_methods(register):
    register(WiseFT)

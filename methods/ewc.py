"""ewc: online Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017; Schwarz et al., ICML 2018) for CLIP.

From the second experience on, the loss on a batch is

    L = objective(batch) + e_lambda · Σ_i F_i (θ_i − θ*_i)²,

over the trainable parameters θ (``learner.trainable_parameters()``), where
``objective`` is finetune's (``loss: ce`` default, ``contrastive``), θ* the
weights after the previous experience, and F the online Fisher information:
after training on experience t,

    F_t = (1/K) Σ_k g_k ⊙ g_k   (K gradient batches of the experience's training data),
    F ← F_t on the first experience,  F ← gamma · F + F_t after each later one,
    θ* ← θ,

with g_k the gradient of finetune's objective on batch k (``fisher_batch_size``
images; default the training batch size; ``fisher_images`` caps how many
images, drawn at random, default all of them). The penalty's gradient is
2 · e_lambda · F ⊙ (θ − θ*).

Reference followed: Mammoth, models/ewc_on.py (aimagelab/mammoth): the penalty
``e_lambda · (fish · (θ − checkpoint)²).sum()`` added to the loss (no ½: the
paper's λ/2 is Mammoth's e_lambda, i.e. λ_paper = 2 · e_lambda), the online
recursion ``fish ← gamma · fish + fish_new`` (the first experience's Fisher
taken as is), θ* = the weights after each experience, defaults from its
configuration models/config/ewc_on.yaml (seq-cifar10): ``e_lambda = 10``,
``gamma = 1`` (its parser requires both; it has no other defaults).

Deliberate differences from Mammoth:

- the Fisher's gradient batch: Mammoth back-propagates one image at a time
  (``fisher_batch_size: 1`` here) and weights each squared gradient by the
  model's probability of the label, exp(−CE); the default here is the
  training batch size with no weighting, as Avalanche's ``EWCPlugin``
  (avalanche/training/plugins/ewc.py ``compute_importances``: mean over
  minibatches of the squared gradient of the minibatch loss), because a CLIP
  backward per image is an epoch of batch-1 steps per experience, and because
  the ``contrastive`` objective has no gradient on one image. A per-batch
  Fisher is about 1/B of the per-image one near a minimum, so e_lambda's scale
  depends on ``fisher_batch_size``;
- the mean is over the gradient batches (Avalanche); Mammoth divides by
  len(loader) · batch_size;
- the objective is finetune's: ``ce`` is cross-entropy over every seen class's
  prompt (CLIP's classifier, both towers trainable), not a linear head;
- the Fisher pass runs in float32 (no mixed precision: squared float16
  gradients would underflow without a loss scaler), in the model's training
  mode as ``fit`` leaves it (as Mammoth; Avalanche switches to eval mode; CLIP
  has no batch norm or active dropout), and is not counted in the training
  cost meters;
- no Fisher is computed after the last experience (nothing uses it).
"""
from __future__ import annotations

from typing import Literal, Optional

import lazy_loader as lazy
from pydantic import Field

from clbench import Batch, Method, Params, hookimpl
from clbench.facts import template_problem
from clbench.memory import nbytes

from .objective import objective

torch = lazy.load("torch")

FORMULA = ("objective + e_lambda * sum_i F_i (theta_i - theta*_i)^2; F <- gamma F + F_t after each experience "
           "(F_1 = F_t), F_t = mean over gradient batches of the squared gradient of finetune's objective on the "
           "experience's training data, theta* = weights after the experience (Mammoth models/ewc_on.py; "
           "e_lambda=10, gamma=1)")


class EWCParams(Params):
    loss: Literal["contrastive", "ce"] = "ce"  # finetune's objective, trained on and differentiated for the Fisher
    template: int = Field(0, ge=0)  # which of the dataset's prompt templates builds the prompts
    e_lambda: float = Field(10.0, ge=0)  # weight of the penalty Σ F (θ − θ*)² (Mammoth's e_lambda)
    gamma: float = Field(1.0, ge=0, le=1)  # decay of the old Fisher in the online recursion
    fisher_batch_size: Optional[int] = Field(None, ge=1)  # images per Fisher gradient; None: train.batch_size; 1: per image
    fisher_images: Optional[int] = Field(None, ge=1)  # at most this many training images (a random subset) per Fisher


def penalty(parameters: dict, fisher: dict, anchors: dict):
    """Σ_i F_i (θ_i − θ*_i)² over the names in ``fisher`` (a scalar tensor; its gradient is 2·F·(θ − θ*))."""
    terms = [(fisher[name] * (parameters[name] - anchors[name]).square()).sum() for name in fisher if name in parameters]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class EWC(Method):
    name = "ewc"
    Params = EWCParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.fisher: dict = {}  # name -> F (float32, on the device), empty before the first Fisher
        self.anchors: dict = {}  # name -> θ* (float32, on the device)
        self.history: list[dict] = []  # per Fisher estimate: experience, images, batches, mean and max of F_t

    @classmethod
    def check(cls, params, stream, train) -> dict[str, str]:
        problems = {}
        problem = template_problem(params.template, stream)
        if problem:
            problems["template"] = problem
        if params.loss == "contrastive" and (params.fisher_batch_size or train.batch_size) < 2:
            problems["fisher_batch_size"] = ("1 with loss: contrastive gives no gradient (one image, one prompt); "
                                             "use 2 or more, or loss: ce")
        return problems

    def loss(self, batch):
        p = self.params
        loss = objective(self.learner, batch, p.loss, p.template)
        if not self.fisher or not p.e_lambda:
            return loss
        return loss + p.e_lambda * penalty(self.learner.trainable_parameters(), self.fisher, self.anchors).to(loss.device)

    def after_experience(self, exp) -> None:
        learner = self.learner
        if exp.index == len(learner.stream.experiences) - 1:
            return  # no later experience is penalised with it
        new, images, batches = self.fisher_information(exp)
        gamma = self.params.gamma
        with torch.no_grad():
            if self.fisher:
                self.fisher = {n: gamma * self.fisher[n] + f if n in self.fisher else f for n, f in new.items()}
            else:
                self.fisher = new
            self.anchors = {n: p.detach().float().clone() for n, p in learner.trainable_parameters().items()}
            flat = torch.cat([f.flatten() for f in new.values()]) if new else torch.zeros(1)
            mean, top = torch.stack([flat.mean(), flat.max()]).tolist()  # one sync per experience
        self.history.append({"experience": exp.index, "images": images, "batches": batches, "fisher_mean": mean,
                             "fisher_max": top})

    def fisher_information(self, exp) -> tuple[dict, int, int]:
        """(F_t by parameter name, images used, gradient batches): mean squared gradient of the objective per batch."""
        p, learner = self.params, self.learner
        parameters = learner.trainable_parameters()
        names = list(parameters)
        tensors = [parameters[n] for n in names]
        sums = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
        size = p.fisher_batch_size or learner.train_config.batch_size
        limit = p.fisher_images or len(exp.train)
        generator = torch.Generator().manual_seed(1_000_003 * learner.seed + exp.index)  # the subset, when capped
        images_used = batches = 0
        for images, labels in exp.train.batches(size, shuffle=True, generator=generator):
            images, labels = images[: limit - images_used], labels[: limit - images_used]
            y = labels.to(learner.device)
            batch = Batch(learner.preprocess(images), y, labels.unique().tolist(), exp)
            grads = torch.autograd.grad(objective(learner, batch, p.loss, p.template), tensors, allow_unused=True)
            with torch.no_grad():
                for total, g in zip(sums, grads):
                    if g is not None:
                        total.add_(g.float().square())
            images_used += len(labels)
            batches += 1
            if images_used >= limit:
                break
        return {n: s / max(1, batches) for n, s in zip(names, sums)}, images_used, batches

    def memory_summary(self):
        return {"parameter_anchors": nbytes(self.fisher) + nbytes(self.anchors)}

    def state_dict(self):
        return {"fisher": dict(self.fisher), "anchors": dict(self.anchors), "history": list(self.history)}

    def load_state_dict(self, state):
        device = self.learner.device
        self.fisher = {n: f.to(device) for n, f in state["fisher"].items()}
        self.anchors = {n: a.to(device) for n, a in state["anchors"].items()}
        self.history = [dict(h) for h in state["history"]]

    def record_extras(self):
        p = self.params
        return {"formula": FORMULA, "loss": p.loss, "e_lambda": p.e_lambda, "gamma": p.gamma,
                "fisher_batch_size": p.fisher_batch_size or self.learner.train_config.batch_size,
                "fisher_images": p.fisher_images, "fisher": self.history}


@hookimpl
def clbench_add_methods(register):
    register(EWC)

"""l2p: Learning to Prompt (Wang et al., CVPR 2022) on a frozen CLIP, prompt tuning of the image tower's input.

A pool of M prompts P_m ∈ R^{Lp×W} (W the image tower's token width) with keys k_m ∈ R^D.
For an image x with query q(x) (the frozen model's own image feature), the N keys most
similar in cosine are picked, s_1..s_N (most similar first), and the image is encoded with
the prompt tokens [P_{s_1}; …; P_{s_N}] (N·Lp tokens) inserted after the class token,
before the first block (``learner.encode_images(x, prompts=...)``). Training minimises

    L = CE over the current experience's classes of logit_scale · cos(f(x; P_s), t_c)
        − λ · (1/B) Σ_b Σ_{i ≤ N} cos(q(x_b), k_{s_bi}),          λ = ``pull_constraint_coeff``

over the prompts and keys only (both towers frozen). With ``batchwise_prompt`` (the
reference's default) every image of a training batch uses the N prompts picked most often in
that batch (most frequent first, ties to the lower id). Prediction picks per image
(no batch vote) and scores CLIP's scaled cosine between f(x; P_s) and each class's
prompt-ensemble text feature t_c.

Reference followed: JH-LEE-KR/l2p-pytorch (``prompt.py``: selection, ``reduce_sim``;
``engine.py``: the loss ``CE − pull_constraint_coeff · reduce_sim`` with logits of classes
outside the current task set to −inf (``train_mask``); ``configs/cifar100_l2p.py``: the
defaults), which ports google-research/l2p (``models/prompt.py``). Defaults, all from
l2p-pytorch ``configs/cifar100_l2p.py`` (the same as the paper's M = 10, N = 5, Lp = 5 and
google-research/l2p's ``configs/cifar100_gaussian_l2p.py``): ``pool_size`` 10 (``--size``),
``length`` 5 (``--length``), ``top_k`` 5 (``--top_k``), ``pull_constraint_coeff`` 0.1,
``batchwise_prompt`` true, uniform U(0, 1) initialisation of prompts and keys
(``--initializer``/``--prompt_key_init uniform``, ``nn.init.uniform_``; the JAX reference's flax
``uniform()`` draws U(0, 0.01)), from a generator seeded by the cell's seed. google-research/l2p's
current ``configs/cifar100_l2p.py`` (updated with DualPrompt) uses length 10, top_k 4, coefficient
1.0: a suite can set those. The reference trains with Adam at lr 0.03, 5 epochs, batch 16 per
device, no weight decay: the suite's ``train`` settings decide here (a method entry's ``train:``
sets them for l2p alone).

Deliberate differences:

- the query is CLIP's L2-normalised, projected image feature of the frozen model (size D =
  ``output_dim``), not the reference's pre-logits class token of the ViT (width W); the keys
  live in that space;
- the classifier is CLIP's text classifier with the frozen text tower (each class's prompt
  ensemble, scaled by CLIP's logit scale), not a trained linear head; so only prompts and keys
  train; the training mask is the same (cross-entropy over the current experience's classes);
- the pooled feature is CLIP's own (class token → ``ln_post`` → projection; the prompt tokens
  are dropped before pooling), not the reference's ``head_type: prompt`` (the mean of the
  prompt tokens' outputs), so the prompted feature stays comparable with the text tower's;
- prompts get no positional embedding (inserted after CLIP's positional embedding and
  ``ln_pre``); the reference extends its learned positional embedding over them;
- the batch vote is used in training only: the reference also votes over each evaluation
  batch, and a test batch there comes from one task's test set, which leaks the task identity
  into the prediction; here a prediction depends on its image alone;
- the paper's optional diversification of selection by past frequencies is not implemented
  (off in every reference config).

Works in both scenarios (in a domain-incremental stream the current classes are every class).
The record holds, per experience, how often each prompt was used in training
(``selection_frequency``), the reference's ``prompt_histogram``.
"""
from __future__ import annotations

import lazy_loader as lazy
from pydantic import Field

from clbench import Method, Params, hookimpl, to_device
from clbench.facts import image_tower_problem
from clbench.losses import cross_entropy_loss
from clbench.memory import nbytes

from .prompt_pool import batchwise_majority, gather_prompts, id_counts, pull_constraint, select_top_k

torch = lazy.load("torch")

FORMULA = ("CE over the current classes of logit_scale*cos(f(x; [P_s1..P_sN]), t_c) - pull_constraint_coeff * (1/B) sum_b sum_i "
           "cos(q_b, k_s_bi); s = top-N keys by cosine to q (batch majority in training) (l2p-pytorch prompt.py, engine.py)")


class L2PParams(Params):
    pool_size: int = Field(10, ge=1)  # M, prompts in the pool (l2p-pytorch configs/cifar100_l2p.py --size)
    length: int = Field(5, ge=1)  # Lp, tokens per prompt (--length)
    top_k: int = Field(5, ge=1)  # N, prompts picked per image (--top_k)
    pull_constraint_coeff: float = Field(0.1, ge=0)  # λ of the key-query surrogate loss (--pull_constraint_coeff)
    batchwise_prompt: bool = True  # in training, every image of a batch uses the batch's N most picked prompts (--batchwise_prompt)


class L2P(Method):
    name = "l2p"
    Params = L2PParams

    @classmethod
    def check(cls, params, stream, train, model=None) -> dict[str, str]:
        tower = image_tower_problem(model)
        if tower:
            return {"name": f"l2p {tower}"}
        if params.top_k > params.pool_size:
            return {"top_k": f"{params.top_k} but pool_size is {params.pool_size}; pick at most pool_size prompts"}
        return {}

    def __init__(self, params, learner):
        super().__init__(params, learner)
        learner.freeze("image")
        learner.freeze("text")
        tower = learner.image_tower
        p = params
        if p.top_k > p.pool_size:
            raise ValueError(f"top_k: {p.top_k} but pool_size is {p.pool_size}; pick at most pool_size prompts")
        g = torch.Generator().manual_seed(learner.seed)  # on the CPU: the same pool on every device
        self.prompts = torch.nn.Parameter(torch.rand(p.pool_size, p.length, tower.width, generator=g).to(learner.device))
        self.keys = torch.nn.Parameter(torch.rand(p.pool_size, tower.output_dim, generator=g).to(learner.device))
        self.counts: list = []  # per experience: (M,) how many training images used each prompt

    def parameters(self) -> list:
        """What training updates: the prompts (M, Lp, W) and their keys (M, D)."""
        return [self.prompts, self.keys]

    def select(self, query: "torch.Tensor", batchwise: bool) -> "torch.Tensor":
        """(B, N) prompt ids for queries (B, D): each image's top-N keys, or the batch's N most picked with ``batchwise``."""
        idx, _ = select_top_k(query, self.keys.detach(), self.params.top_k)
        return batchwise_majority(idx, self.params.pool_size) if batchwise else idx

    def query(self, images: "torch.Tensor") -> "torch.Tensor":
        """The frozen model's own features (B, D) of preprocessed images: no prompts, no gradients."""
        with torch.no_grad():
            return self.learner.encode_images(images)

    def before_experience(self, exp) -> None:
        self.counts.append(torch.zeros(self.params.pool_size, dtype=torch.long, device=self.learner.device))

    def train(self, exp) -> None:
        self.learner.fit(exp, self.loss, parameters=self.parameters())

    def loss(self, batch):
        p, learner = self.params, self.learner
        query = self.query(batch.images)
        idx = self.select(query, p.batchwise_prompt)
        features = learner.encode_images(batch.images, prompts=gather_prompts(self.prompts, idx))
        space = sorted(batch.exp.classes)  # the reference's train_mask: logits outside the current task are -inf
        text = learner.class_features(space)
        classes = to_device(space, batch.labels.device)
        loss = cross_entropy_loss(features, batch.labels, text, classes, learner.logit_scale)
        if self.counts:
            self.counts[-1] += id_counts(idx, p.pool_size)
        if p.pull_constraint_coeff:
            loss = loss - p.pull_constraint_coeff * pull_constraint(query, self.keys, idx)
        return loss

    def predict(self, images, classes):
        """CLIP's scaled cosine of the prompted feature to each class's prompt ensemble; prompts picked per image."""
        learner = self.learner
        idx = self.select(self.query(images), batchwise=False)
        features = learner.encode_images(images, prompts=gather_prompts(self.prompts, idx))
        return learner.logit_scale * features @ learner.class_features(classes).t()

    def memory_summary(self):
        return {"prompts": nbytes(self.parameters())}

    def state_dict(self):
        return {"prompts": self.prompts.detach(), "keys": self.keys.detach(), "counts": list(self.counts)}

    def load_state_dict(self, state):
        device = self.learner.device
        with torch.no_grad():
            self.prompts.copy_(state["prompts"].to(device))
            self.keys.copy_(state["keys"].to(device))
        self.counts = [c.to(device) for c in state["counts"]]

    def record_extras(self):
        p = self.params
        frequency = [[round(float(v), 6) for v in (c.float() / c.sum().clamp(min=1)).tolist()] for c in self.counts]
        return {"formula": FORMULA, "pool_size": p.pool_size, "length": p.length, "top_k": p.top_k,
                "pull_constraint_coeff": p.pull_constraint_coeff, "batchwise_prompt": p.batchwise_prompt,
                "batchwise_at_test": False, "selection_frequency": frequency,
                "query": "the frozen model's L2-normalised projected image feature (not the ViT's pre-logits class token)",
                "classifier": "CLIP's text classifier (frozen text tower, prompt ensemble), not a linear head"}


@hookimpl
def clbench_add_methods(register):
    register(L2P)

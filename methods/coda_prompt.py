"""coda_prompt: CODA-Prompt (Smith et al., CVPR 2023) on a frozen CLIP, prefix tuning of the image tower.

In each prompted block l (``layers``) a pool of M prompt components P_m ∈ R^{Lp×W} with keys
K_m ∈ R^D and attention vectors A_m ∈ R^D gives every image its own prompt

    α_m(x) = cos(q(x) ⊙ A_m, K_m),        p(x) = Σ_m α_m(x) P_m  ∈ R^{Lp×W},

q(x) the frozen model's own image feature. The first Lp/2 rows of p(x) are joined to the
block's attention keys, the rest to its values, after their projection (prefix tuning,
``learner.encode_images(x, prefixes=...)``). The pool is split evenly over the stream's T
experiences, M/T components each (the remainder is unused): experience t creates its slice,
trains only it, and uses (and from then on keeps frozen) the slices of earlier experiences;
prediction after experience t uses every slice so far. A new slice starts by Gram–Schmidt:
orthonormal rows (standard normal draws) orthogonal to the earlier slices, for K, A and the
flattened P alike. Training minimises, over the current slice only,

    L = CE over the current experience's classes of logit_scale · cos(f(x; prefixes), t_c)
        + ortho_mu · Σ_l [ Ω(K_l) + Ω(A_l) + Ω(P_l) ],    Ω(T) = mean over entries of (T Tᵀ − I)²

with K_l, A_l, P_l the rows of every slice so far (earlier ones constant), P_l flattened to
(rows, Lp·W). Prediction: CLIP's scaled cosine of the prefixed feature to each class's
prompt-ensemble text feature t_c.

Reference followed: GT-RIPL/CODA-Prompt, ``models/zoo.py`` class ``CodaPrompt`` at the commit
that introduced per-task Gram–Schmidt initialisation (605ac87: ``process_task_count``,
``gram_schmidt``, ``ortho_penalty`` = ``((t @ t.T - I) ** 2).mean()``, the pool split
``pt = pool_size / n_tasks`` with ``K[:s].detach()`` for earlier tasks, keys/values =
first/second half of the prompt, ``e_layers = [0, 1, 2, 3, 4]``); ``models/vit.py`` (prefixes
joined to projected keys and values; the penalty summed over layers); ``learners/prompt.py``
(cross-entropy with the logits of earlier tasks' classes set to −inf and later ones cut:
the current task's classes). Defaults: ``pool_size`` 100, ``length`` 8 and ``ortho_mu`` 0.0
from ``--prompt_param 100 8 0.0`` in ``experiments/imagenet-r.sh`` and ``experiments/domainnet.sh``
("with updated code, now can be 0!"; the paper's 0.1 went with an older penalty scaled by
1e-6); ``layers`` [0, 1, 2, 3, 4] (``e_layers``). The reference trains with Adam at lr 0.001,
cosine schedule, batch 128, no weight decay (``configs/*_prompt.yaml``): the suite's ``train``
settings decide here.

Deliberate differences:

- the query is CLIP's L2-normalised, projected image feature of the frozen model (size D =
  ``output_dim``), not the reference's pre-logits class token of the ViT (width W); α does not
  depend on the query's norm, so only the feature itself differs;
- the classifier is CLIP's text classifier with the frozen text tower (prompt ensemble, CLIP's
  logit scale), not a trained linear head: only the components, keys and attention vectors
  train; the training mask is the same (the current experience's classes);
- each experience's slice is its own tensor and only the current one is given to the
  optimizer (the reference detaches earlier rows of one tensor): the same gradients, and the
  earlier slices stay exactly as they were under any optimizer (weight decay included);
- Gram–Schmidt projects a new row off the span of all earlier rows (the reference projects off
  each earlier row in turn, the same when they are orthonormal, as before any training); on a
  tower whose key or prompt space is smaller than the pool, a new orthonormal family starts
  once the space is full (the reference divides by a vanishing norm there); the draws come from
  a generator seeded by the cell's seed and the experience, so a resumed cell draws the same;
- ``layers`` must exist in the image tower: a block index past the tower's last block is
  refused when the cell starts (the tiny test model has 2 blocks; ViT-B/16 has 12). A list in
  a suite is a grid axis, so a suite writes ``layers: [[0, 1]]`` (``[[0, 1], [0, 1, 2]]``: two
  variants); a plain ``layers: [0, 1]`` is refused with that hint.

Works in both scenarios (in a domain-incremental stream each domain gets its slice, and the
current classes are every class). The record holds, per experience, the mean weight α of each
experience's slice over that experience's training batches (``slice_weights``).
"""
from __future__ import annotations

import math

import lazy_loader as lazy
from pydantic import Field, field_validator

from clbench import Method, Params, hookimpl, to_device
from clbench.facts import blocks_problem, image_tower_problem
from clbench.losses import cross_entropy_loss
from clbench.memory import nbytes

from .prompt_pool import coda_weights, compose, gram_schmidt, ortho_penalty

torch = lazy.load("torch")

FORMULA = ("CE over the current classes of logit_scale*cos(f(x; prefixes), t_c) + ortho_mu * sum_l [O(K_l) + O(A_l) + O(P_l)]; "
           "prefix_l(x) = sum_m cos(q(x)*A_m, K_m) P_m, keys = first Lp/2 rows, values = the rest; O(T) = mean((T T^T - I)^2) "
           "(GT-RIPL/CODA-Prompt models/zoo.py CodaPrompt)")


class CodaPromptParams(Params):
    pool_size: int = Field(100, ge=1)  # M components per layer, split evenly over the experiences (--prompt_param 100 8 0.0, arg 1)
    length: int = Field(8, ge=2)  # Lp prompt rows: Lp/2 prefix keys, the rest prefix values (arg 2)
    ortho_mu: float = Field(0.0, ge=0)  # weight of the orthogonality penalty (arg 3; experiments/imagenet-r.sh, domainnet.sh)
    layers: tuple[int, ...] = Field((0, 1, 2, 3, 4), min_length=1)  # prompted blocks, from 0 (zoo.py e_layers)

    @field_validator("layers", mode="before")
    @classmethod
    def _a_list(cls, value):
        if isinstance(value, int):
            raise ValueError(f"{value} is one block, not a list of blocks; in a suite write layers: [[0, 1, 2]] "
                             f"(a plain list there is a grid axis: [[0, 1], [0, 1, 2]] gives two variants)")
        return value

    @field_validator("layers")
    @classmethod
    def _distinct_blocks(cls, value):
        if any(l < 0 for l in value):
            raise ValueError("block indices count from 0")
        if len(set(value)) != len(value):
            raise ValueError("a block is listed twice")
        return tuple(sorted(value))


def experience_count(stream) -> int | None:
    """How many experiences a stream has, from its facts (None when unknown before the data is read)."""
    if stream.steps is not None:
        return stream.steps
    if stream.scenario == "domain_incremental" and stream.domains:
        return len(stream.domains)
    return None


class CodaPrompt(Method):
    name = "coda_prompt"
    Params = CodaPromptParams

    @classmethod
    def check(cls, params, stream, train, model=None) -> dict[str, str]:
        tower = image_tower_problem(model)
        if tower:
            return {"name": f"coda_prompt {tower}"}
        past = blocks_problem(params.layers, model)
        if past:
            return {"layers": past}
        n = experience_count(stream)
        if n is not None and params.pool_size < n:
            return {"pool_size": f"{params.pool_size} components cannot be split over the {n} experiences of stream "
                                 f"'{stream.label}'; use at least {n}"}
        return {}

    def __init__(self, params, learner):
        super().__init__(params, learner)
        tower = learner.image_tower
        past = [l for l in params.layers if l >= tower.blocks]
        if past:
            raise ValueError(f"layers: block {past[0]} but the image tower has {tower.blocks} blocks (0..{tower.blocks - 1}); "
                             f"list blocks below {tower.blocks}")
        n_tasks = len(learner.stream.experiences)
        self.per_task = params.pool_size // n_tasks
        if not self.per_task:
            raise ValueError(f"pool_size: {params.pool_size} components cannot be split over {n_tasks} experiences; use at least {n_tasks}")
        learner.freeze("image")
        learner.freeze("text")
        self.width, self.dim = tower.width, tower.output_dim
        # per prompted block: one tensor per experience so far, (per_task, Lp, W) components, (per_task, D) keys and attention
        self.P: dict[int, list] = {l: [] for l in params.layers}
        self.K: dict[int, list] = {l: [] for l in params.layers}
        self.A: dict[int, list] = {l: [] for l in params.layers}
        self.weight_sums: list = []  # per experience: (slices,) sum over training images and layers of each slice's mean α
        self.images_seen: list[int] = []

    # --- the pool --------------------------------------------------------------
    @property
    def slices(self) -> int:
        return len(self.K[self.params.layers[0]])

    def parameters(self) -> list:
        """What training updates: the current (last) slice's components, keys and attention vectors in every layer."""
        return [table[l][-1] for table in (self.P, self.K, self.A) for l in self.params.layers]

    def add_slice(self) -> None:
        """Freeze every slice so far and add the next one, initialised by Gram–Schmidt against the earlier ones."""
        t, p, device = self.slices, self.params, self.learner.device
        generator = torch.Generator().manual_seed(self.learner.seed * 100_003 + t)
        for table in (self.P, self.K, self.A):
            for l in p.layers:
                for old in table[l]:
                    old.requires_grad_(False)
        for l in p.layers:
            for table, shape in ((self.K, (self.dim,)), (self.A, (self.dim,)), (self.P, (p.length, self.width))):
                previous = torch.cat(table[l]).reshape(t * self.per_task, -1) if t else torch.zeros(0, math.prod(shape))
                rows = gram_schmidt(previous, self.per_task, generator)
                table[l].append(torch.nn.Parameter(rows.reshape(self.per_task, *shape).to(device)))

    def pool(self, layer: int) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """(P (rows, Lp, W), K (rows, D), A (rows, D)) of one layer: every slice so far, the earlier ones constant."""
        return torch.cat(self.P[layer]), torch.cat(self.K[layer]), torch.cat(self.A[layer])

    def prefixes(self, query: "torch.Tensor") -> tuple[dict, "torch.Tensor"]:
        """({block: (prefix keys (B, Lp/2, W), prefix values (B, Lp − Lp/2, W))}, α summed over layers (B, rows))."""
        half = self.params.length // 2
        out, alpha_sum = {}, 0
        for l in self.params.layers:
            P, K, A = self.pool(l)
            alpha = coda_weights(query, K, A)
            prompt = compose(alpha, P)
            out[l] = (prompt[:, :half], prompt[:, half:])
            alpha_sum = alpha_sum + alpha.detach()
        return out, alpha_sum

    def penalty(self) -> "torch.Tensor":
        """Σ over layers of Ω(K) + Ω(A) + Ω(P flattened), every slice so far (CODA-Prompt's ``ortho_penalty``)."""
        total = 0
        for l in self.params.layers:
            P, K, A = self.pool(l)
            total = total + ortho_penalty(K) + ortho_penalty(A) + ortho_penalty(P)
        return total

    def query(self, images: "torch.Tensor") -> "torch.Tensor":
        """The frozen model's own features (B, D) of preprocessed images: no prefixes, no gradients."""
        with torch.no_grad():
            return self.learner.encode_images(images)

    # --- the cell's life cycle ----------------------------------------------------
    def before_experience(self, exp) -> None:
        while self.slices <= exp.index:
            self.add_slice()
        self.weight_sums.append(torch.zeros(self.slices, device=self.learner.device))
        self.images_seen.append(0)

    def train(self, exp) -> None:
        self.learner.fit(exp, self.loss, parameters=self.parameters())

    def loss(self, batch):
        p, learner = self.params, self.learner
        prefixes, alpha_sum = self.prefixes(self.query(batch.images))
        features = learner.encode_images(batch.images, prefixes=prefixes)
        space = sorted(batch.exp.classes)  # the reference's mask: earlier tasks' logits -inf, later ones cut
        text = learner.class_features(space)
        loss = cross_entropy_loss(features, batch.labels, text, to_device(space, batch.labels.device), learner.logit_scale)
        if self.weight_sums:
            per_slice = alpha_sum.reshape(len(alpha_sum), self.slices, self.per_task).mean(2).sum(0) / len(p.layers)
            self.weight_sums[-1] += per_slice
            self.images_seen[-1] += len(batch.labels)
        if p.ortho_mu:
            loss = loss + p.ortho_mu * self.penalty()
        return loss

    def predict(self, images, classes):
        """CLIP's scaled cosine of the prefixed feature to each class's prompt ensemble; every slice so far."""
        learner = self.learner
        prefixes, _ = self.prefixes(self.query(images))
        features = learner.encode_images(images, prefixes=prefixes)
        return learner.logit_scale * features @ learner.class_features(classes).t()

    # --- record and resume -----------------------------------------------------------
    def memory_summary(self):
        return {"prompts": nbytes([self.P, self.K, self.A])}

    def state_dict(self):
        def plain(table):
            return {str(l): [t.detach() for t in ts] for l, ts in table.items()}
        return {"P": plain(self.P), "K": plain(self.K), "A": plain(self.A),
                "weight_sums": list(self.weight_sums), "images_seen": list(self.images_seen)}

    def load_state_dict(self, state):
        device = self.learner.device
        for name, table in (("P", self.P), ("K", self.K), ("A", self.A)):
            for l in self.params.layers:
                table[l] = [torch.nn.Parameter(t.to(device), requires_grad=False) for t in state[name][str(l)]]
        self.weight_sums = [w.to(device) for w in state["weight_sums"]]
        self.images_seen = [int(n) for n in state["images_seen"]]

    def record_extras(self):
        p = self.params
        weights = [[round(float(v), 6) for v in (s / max(n, 1)).tolist()] for s, n in zip(self.weight_sums, self.images_seen)]
        return {"formula": FORMULA, "pool_size": p.pool_size, "length": p.length, "ortho_mu": p.ortho_mu,
                "layers": list(p.layers), "components_per_experience": self.per_task, "slice_weights": weights,
                "query": "the frozen model's L2-normalised projected image feature (not the ViT's pre-logits class token)",
                "classifier": "CLIP's text classifier (frozen text tower, prompt ensemble), not a linear head"}


@hookimpl
def clbench_add_methods(register):
    register(CodaPrompt)

"""derpp: Dark Experience Replay++ (Buzzega et al., NeurIPS 2020), after Mammoth's models/derpp.py.

Every step draws two replay minibatches M1 and M2 from the memory, independently and
each without replacement (Mammoth's two ``Buffer.get_data(minibatch_size)`` calls), and
appends them after the step's new images B; the loss is

    L = CE(B) + alpha * MSE(M1) + beta * CE(M2)

- scores z_c(x) = logit_scale * f(x) . g(prompt_template(c)) for c in ``seen`` (the classes
  of experiences 0..t, old ones first): CLIP's logits over the seen classes' prompts;
- CE: cross-entropy of z at the image's label, averaged over the rows (finetune's
  ``loss: ce``, i.e. ``objective(learner, batch, "ce", template)`` on those rows alone);
- MSE: the mean over every *stored* (row, column) pair of M1 of (z_c(x) - stored_c(x))^2,
  where an exemplar's stored columns are the classes seen when its scores were stored
  (a prefix of today's ``seen``, which lists old classes first).

The memory is Mammoth's reservoir (``utils/buffer.py``: ``reservoir()``, ``Buffer.add_data``),
updated at every step, after the replay minibatches were drawn: each new image of the
step is offered with the scores z computed on that very batch (before the optimizer
step, detached); the n-th image offered fills slot n while the memory is not full,
otherwise it replaces slot r for r uniform in 0..n-1 when r < K (K the capacity). An
image is offered again in every epoch, as Mammoth calls ``add_data`` in every
``observe``, so one image may hold two slots (with its scores of two moments).

Defaults: alpha 0.3, beta 0.5 (Mammoth's models/config/derpp.yaml, seq-cifar100, buffer 500);
buffer ``fraction: 0.01`` (500 of CIFAR-100's 50,000 training images), reservoir;
``replay_ratio: 1`` (Mammoth's minibatch_size = batch_size, 32 there).

Deliberate differences from Mammoth:
- the classifier: Mammoth's network has a fixed head over all N classes of the dataset
  from the first task, so its CE and stored logits span N columns (future classes too)
  and its MSE averages over all N. CLIP's classifier is the seen classes' prompts: CE is
  over ``seen`` (scoring upcoming classes would use their names before they are taught),
  scores are stored over the classes seen at that step, and the MSE covers the stored
  columns only (with every column stored, as in a domain-incremental stream, it is
  exactly Mammoth's ``F.mse_loss``);
- one forward pass over the mixed batch (B, M1, M2) and one backward pass instead of
  three: the same gradient for a model without batch statistics (CLIP uses LayerNorm);
- the memory keeps dataset ids (positions in ``learner.dataset.train``) and rereads the
  images as stored (uint8, never augmented: clbench does not augment); Mammoth keeps the
  non-augmented image tensors, i.e. the same pixels;
- random draws (reservoir, replay minibatches) come from the method's own generator
  seeded by the cell's seed, not numpy's global state;
- learning rate, optimizer, epochs and batch size are the cell's ``train`` settings
  (Mammoth's derpp.yaml: SGD, lr 0.03, its xder dataset config).

``memory_summary``: ``replay_images`` (the exemplars' images as stored) and
``stored_outputs`` (float32 scores: one row as wide as the stream's class count per
filled slot, Mammoth's fixed-head layout).
"""
from __future__ import annotations

from typing import Literal

import lazy_loader as lazy
from pydantic import Field, field_validator

from clbench import Method, hookimpl, to_device
from clbench.buffer import BufferSpec
from clbench.losses import positions
from clbench.replay import ReplayMethod, ReplayParams

torch = lazy.load("torch")

FORMULA = ("ce(z(B), y) + alpha * mse(z(M1), stored z; mean over the stored columns) + beta * ce(z(M2), y); "
           "z = logit_scale * cos(image, class prompt) over the seen classes; M1, M2 two replay minibatches; "
           "reservoir memory updated every step with the scores of that step (Mammoth models/derpp.py)")


def reservoir_if_unset(value):
    """A ``buffer`` mapping without ``policy`` gets ``reservoir`` (the reference's memory)."""
    if isinstance(value, dict) and "policy" not in value:
        return {**value, "policy": "reservoir"}
    return value


class DERppParams(ReplayParams):
    buffer: BufferSpec = Field(default_factory=lambda: BufferSpec(fraction=0.01, policy="reservoir"))
    loss: Literal["ce"] = "ce"  # DER++ distils classifier scores: cross-entropy only
    alpha: float = Field(0.3, ge=0)  # weight of the MSE between current and stored scores (M1)
    beta: float = Field(0.5, ge=0)  # weight of the cross-entropy on replayed labels (M2)

    @field_validator("buffer", mode="before")
    @classmethod
    def _policy_defaults_to_reservoir(cls, value):
        return reservoir_if_unset(value)

    @field_validator("buffer")
    @classmethod
    def _reservoir_only(cls, buffer: BufferSpec) -> BufferSpec:
        if buffer.policy != "reservoir":
            raise ValueError(f"derpp fills its memory by reservoir sampling during training (as Mammoth), not "
                             f"'{buffer.policy}'; use policy: reservoir or leave policy out")
        if buffer.per_class is not None:
            raise ValueError("derpp's reservoir has one fixed capacity; give buffer.size or buffer.fraction")
        return buffer


def derpp_loss(scores, target, n_new: int, n_mse: int, stored, stored_cols, alpha: float, beta: float):
    """DER++'s loss on one mixed batch (a scalar tensor).

    ``scores`` (B, S): the current scores over the S seen classes; ``target`` (B,): each row's
    label as a column index. Rows: ``n_new`` new images, then ``n_mse`` replayed rows matched
    against ``stored`` (n_mse, W >= S) scores whose first ``stored_cols`` (n_mse,) columns were
    stored, then the rows replayed for their labels. ``stored`` is ignored when n_mse is 0.
    """
    F = torch.nn.functional
    loss = F.cross_entropy(scores[:n_new], target[:n_new])
    if n_mse:
        s = scores.shape[1]
        current = scores[n_new:n_new + n_mse].float()
        kept = torch.arange(s, device=scores.device)[None, :] < stored_cols[:, None]
        squares = torch.where(kept, (current - stored[:, :s].float()) ** 2, torch.zeros_like(current))
        mse = squares.sum() / kept.sum()
        replayed = scores[n_new + n_mse:]
        loss = loss + alpha * mse + beta * F.cross_entropy(replayed, target[n_new + n_mse:])
    return loss


class ScoreMemory:
    """Mammoth's reservoir ``Buffer`` of (image, label, scores), holding dataset ids for the images.

    ``images``: the dataset's training split (an id is a position in it); ``width``: the
    stream's class count (the widest score row); scores live on ``device``. ``sample(n)``
    returns two independent draws of min(n, len) slots each, concatenated, as the replay
    batch for ``Learner.fit``; ``last`` keeps the two draws' slots for the loss.
    """

    def __init__(self, capacity: int, width: int, images, seed: int, device):
        self.capacity = capacity
        self.images = images
        self.device = device
        self.ids = torch.full((capacity,), -1, dtype=torch.long)
        self.scores = torch.zeros(capacity, width, device=device)
        self.cols = torch.zeros(capacity, dtype=torch.long, device=device)
        self.offered = 0
        self.generator = torch.Generator().manual_seed(seed + 104729)  # independent of the training order
        self.last = None

    def __len__(self) -> int:
        return min(self.offered, self.capacity)

    def add(self, ids, scores) -> None:
        """Offer images (dataset ids (n,), host) with their scores (n, c), in order (Algorithm R)."""
        n = len(ids)
        k = self.offered + torch.arange(n)  # images offered before each one
        r = (torch.rand(n, generator=self.generator, dtype=torch.float64) * (k + 1)).floor().long()  # uniform on 0..k
        slot = torch.where(k < self.capacity, k, torch.where(r < self.capacity, r, torch.full_like(r, -1)))
        self.offered += n
        latest = {}  # slot -> row; a slot written twice in one batch keeps the later image
        for row, s in enumerate(slot.tolist()):
            if s >= 0:
                latest[s] = row
        if not latest:
            return
        slots, rows = torch.tensor(list(latest)), torch.tensor(list(latest.values()))
        self.ids[slots] = torch.as_tensor(ids)[rows]
        on_device = to_device(slots, self.device)
        c = scores.shape[1]
        self.scores[on_device] = 0.0
        self.scores[on_device, :c] = scores[to_device(rows, scores.device)].detach().float().to(self.device)
        self.cols[on_device] = c

    def sample(self, n: int):
        """Two replay minibatches of min(n, len) exemplars each, concatenated: (uint8 images, labels, ids)."""
        size = len(self)
        if size == 0:
            raise ValueError("cannot sample from an empty replay memory")
        first = torch.randperm(size, generator=self.generator)[:n]
        second = torch.randperm(size, generator=self.generator)[:n]
        self.last = (first, second)
        ids = self.ids[torch.cat([first, second])]
        return self.images.load(ids), self.images.labels[ids], ids

    def stored(self, slots):
        """(scores (n, width), stored column counts (n,)) of the given slots (a host tensor), on the device."""
        on_device = to_device(slots, self.device)
        return self.scores[on_device], self.cols[on_device]

    def image_bytes(self) -> int:
        return self.images.subset(self.ids[: len(self)]).stored_bytes() if len(self) else 0

    def score_bytes(self) -> int:
        return len(self) * self.scores.shape[1] * self.scores.element_size()

    def state_dict(self) -> dict:
        return {"ids": self.ids, "scores": self.scores, "cols": self.cols, "offered": self.offered,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.ids = state["ids"].long().cpu()
        self.scores = state["scores"].to(self.device)
        self.cols = state["cols"].long().to(self.device)
        self.offered = int(state["offered"])
        self.generator.set_state(state["generator"])
        self.last = None


class DERpp(Method):
    name = "derpp"
    Params = DERppParams

    @classmethod
    def check(cls, params, stream, train) -> dict[str, str]:
        """The template index, the memory against the training set, a replay batch rounding to zero (as ReplayMethod)."""
        return ReplayMethod.check(params, stream, train)

    def __init__(self, params, learner):
        super().__init__(params, learner)
        experiences = learner.stream.experiences
        train = learner.dataset.train
        if getattr(train, "ids", None) is None:
            raise ValueError("derpp keeps exemplars by dataset id; this dataset's training set has no ids")
        spec = params.buffer
        capacity = spec.size if spec.size is not None else int(round(spec.fraction * sum(len(e.train) for e in experiences)))
        width = len(learner.stream.seen(len(experiences) - 1))
        self.memory = ScoreMemory(capacity, width, train, learner.seed, learner.device)

    def train(self, exp) -> None:
        replay_batch = round(self.params.replay_ratio * self.learner.train_config.batch_size)
        self.learner.fit(exp, self.loss, replay=self.memory, replay_batch_size=replay_batch)

    def loss(self, batch):
        learner, p = self.learner, self.params
        if batch.ids is None:
            raise ValueError("derpp stores scores by dataset id; this batch has no ids")
        labels = batch.labels
        seen = learner.stream.seen(batch.exp.index)
        seen_t = to_device(seen, labels.device)
        text = learner.class_features(seen, template=p.template, grad=True)
        scores = learner.logit_scale * learner.encode_images(batch.images) @ text.t()
        n_new, n_mse, stored, cols = batch.n_new, 0, None, None
        if batch.n_replayed:
            first, second = self.memory.last
            if batch.n_replayed != len(first) + len(second):
                raise RuntimeError("derpp's replayed rows are not the two minibatches its memory drew")
            n_mse = len(first)
            stored, cols = self.memory.stored(first)
        loss = derpp_loss(scores, positions(seen_t, labels), n_new, n_mse, stored, cols, p.alpha, p.beta)
        self.memory.add(batch.ids[:n_new], scores[:n_new].detach())  # after sampling, as Mammoth's observe
        return loss

    def buffer_summary(self) -> dict:
        return {"exemplars": len(self.memory), "bytes": self.memory.image_bytes(), "policy": "reservoir",
                "capacity_rule": self.params.buffer.model_dump(exclude_none=True), "offered": self.memory.offered}

    def memory_summary(self) -> dict[str, int]:
        return {"replay_images": self.memory.image_bytes(), "stored_outputs": self.memory.score_bytes()}

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])

    def record_extras(self):
        return {"formula": FORMULA, "alpha": self.params.alpha, "beta": self.params.beta,
                "defaults": "alpha 0.3, beta 0.5, buffer fraction 0.01 reservoir, replay_ratio 1 "
                            "(Mammoth models/config/derpp.yaml, seq-cifar100, buffer 500)",
                "exemplars_offered": self.memory.offered}


@hookimpl
def clbench_add_methods(register):
    register(DERpp)

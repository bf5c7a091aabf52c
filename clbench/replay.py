"""The base for replay methods: a memory filled after each experience and mixed into every step.

A third-party replay method subclasses ``ReplayMethod`` (its Params subclass
``ReplayParams``) and writes only its loss; the buffer, the batch mixing and
the record's buffer accounting come with it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .buffer import BufferSpec, ReplayBuffer
from .facts import StreamFacts, template_problem
from .method import Method, Params


def memory_capacity(spec: BufferSpec, n_classes: int | None, train_size: int | None) -> int | None:
    """Exemplars the memory holds once ``n_classes`` classes are seen (None: unknown before the data is read)."""
    if spec.size is not None:
        return spec.size
    if spec.per_class is not None:
        return None if n_classes is None else spec.per_class * n_classes
    return None if train_size is None else int(round(spec.fraction * train_size))


class ReplayParams(Params):
    buffer: BufferSpec = Field(default_factory=lambda: BufferSpec(fraction=0.02))
    replay_ratio: float = Field(1.0, ge=0)  # replay exemplars per new image in each step
    loss: Literal["contrastive", "ce"] = "contrastive"
    template: int = Field(0, ge=0)  # prompt template used for training text features


class ReplayMethod(Method):
    Params = ReplayParams

    @classmethod
    def check(cls, params, stream: StreamFacts, train) -> dict[str, str]:
        """The template index, the memory against the stream's training set, a replay batch that rounds to zero.

        A replay batch larger than the memory is valid: the whole memory is replayed
        each step (Mammoth's ``Buffer.get_data`` caps the same way; see ``sample``).
        """
        problem = template_problem(params.template, stream)
        if problem:
            return {"template": problem}
        spec = params.buffer
        key = "buffer." + next(k for k in ("size", "per_class", "fraction") if getattr(spec, k) is not None)
        capacity = memory_capacity(spec, stream.num_classes, stream.train_size)
        if capacity is not None and stream.train_size is not None and capacity > stream.train_size:
            return {key: f"a memory of {capacity} exemplars but stream '{stream.label}' has only {stream.train_size} "
                         f"training images; use a memory of at most {stream.train_size}"}
        replay_batch = round(params.replay_ratio * train.batch_size)
        if params.replay_ratio > 0 and replay_batch == 0 and capacity != 0:
            return {"replay_ratio": f"{params.replay_ratio} × batch_size {train.batch_size} rounds to 0 replayed exemplars "
                                    f"per step, so nothing would be replayed; use replay_ratio ≥ {1 / train.batch_size:.3g} "
                                    f"or 0 to switch replay off"}
        return {}

    def __init__(self, params, learner):
        super().__init__(params, learner)
        train_size = sum(len(e.train) for e in learner.stream.experiences)
        self.buffer = ReplayBuffer(params.buffer, train_size, seed=learner.seed)

    def train(self, exp) -> None:
        replay_batch = round(self.params.replay_ratio * self.learner.train_config.batch_size)
        self.learner.fit(exp, self.loss, replay=self.buffer, replay_batch_size=replay_batch)

    def after_experience(self, exp) -> None:
        self.buffer.update(exp.train, self.learner.stream.seen(exp.index), features=self.learner.features)

    def buffer_summary(self) -> dict:
        return self.buffer.summary()

    def memory_summary(self) -> dict[str, int]:
        return {"replay_images": self.buffer.summary()["bytes"]}

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])

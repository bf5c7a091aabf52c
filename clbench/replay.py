"""The base for replay methods: a memory filled after each experience and mixed into every step.

A third-party replay method subclasses ``ReplayMethod`` (its Params subclass
``ReplayParams``) and writes only its loss; the buffer, the batch mixing and
the record's buffer accounting come with it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .buffer import BufferSpec, ReplayBuffer
from .method import Method, Params


class ReplayParams(Params):
    buffer: BufferSpec = Field(default_factory=lambda: BufferSpec(fraction=0.02))
    replay_ratio: float = Field(1.0, ge=0)  # replay exemplars per new image in each step
    loss: Literal["contrastive", "ce"] = "contrastive"
    template: int = Field(0, ge=0)  # prompt template used for training text features


class ReplayMethod(Method):
    Params = ReplayParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        train_size = sum(len(e.train) for e in learner.stream.experiences)
        self.buffer = ReplayBuffer(params.buffer, train_size, seed=int(learner.generator.initial_seed()))

    def train(self, exp) -> None:
        replay_batch = round(self.params.replay_ratio * self.learner.cfg.batch_size)
        self.learner.fit(exp, self.loss, replay=self.buffer, replay_batch_size=replay_batch)

    def after_experience(self, exp) -> None:
        self.buffer.update(exp.train, self.learner.stream.seen(exp.index), features=self.learner.features)

    def buffer_summary(self) -> dict:
        return self.buffer.summary()

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])

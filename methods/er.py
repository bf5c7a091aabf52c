"""er: experience replay; each step mixes a replay batch from the memory into the new batch.

Same objective as finetune (``loss: contrastive`` or ``ce``) on the mixed
batch. The memory (``buffer: {size | per_class | fraction, policy}``) is
class-balanced random by default; ``replay_ratio`` sets replay images per new image.
"""
from __future__ import annotations

from clbench import hookimpl
from clbench.replay import ReplayMethod, ReplayParams

from .objective import objective


class ER(ReplayMethod):
    name = "er"
    Params = ReplayParams

    def loss(self, batch):
        return objective(self.learner, batch, self.params.loss, self.params.template)


@hookimpl
def clbench_add_methods(register):
    register(ER)

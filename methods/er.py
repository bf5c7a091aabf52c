"""er: experience replay; each step mixes a replay batch from the memory into the new batch.

Same objective as finetune (``loss: contrastive`` or ``ce``) on the mixed
batch. The memory (``buffer: {size | per_class | fraction, policy}``) is
class-balanced random by default; ``replay_ratio`` sets replay images per new image.
"""
from clbench import hookimpl
from clbench.losses import clip_objective
from clbench.replay import ReplayMethod, ReplayParams


class ER(ReplayMethod):
    name = "er"
    Params = ReplayParams

    def loss(self, images, labels, exp):
        return clip_objective(self.learner, images, labels, exp, self.params.loss, self.params.template)


@hookimpl
def clbench_add_methods(register):
    register(ER)

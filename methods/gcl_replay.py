"""gcl_replay: replay with a global contrastive loss over all seen classes.

Image anchors are contrasted with every seen class prompt; text anchors
with images of other classes through per-class moving-average normalisers
(γ = ``gamma``), SogCLR-style. See clbench/gcl.py for the formulas.
"""
import torch
from pydantic import Field

from clbench import hookimpl
from clbench.gcl import GlobalContrastive
from clbench.replay import ReplayMethod, ReplayParams


class GCLParams(ReplayParams):
    gamma: float = Field(0.9, gt=0, le=1)


class GCLReplay(ReplayMethod):
    name = "gcl_replay"
    Params = GCLParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.objective = GlobalContrastive(params.gamma)

    def loss(self, images, labels, exp):
        learner = self.learner
        seen = learner.stream.seen(exp.index)
        text = learner.class_features(seen, template=self.params.template, grad=True)
        seen_t = torch.tensor(seen, device=labels.device)
        return self.objective.loss(learner.encode_images(images), labels, text, seen_t, learner.logit_scale)

    def state_dict(self):
        return {**super().state_dict(), "log_u": dict(self.objective.log_u)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.objective.log_u = dict(state["log_u"])

    def record_extras(self):
        return {"formula": "global contrastive, per-class moving-average normalisers", "gamma": self.params.gamma}


@hookimpl
def clbench_add_methods(register):
    register(GCLReplay)

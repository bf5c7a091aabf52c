"""gcl_replay: replay with a global contrastive loss over all seen classes.

Image anchors are contrasted with every seen class prompt; each (image, its
class prompt) pair is a text anchor contrasted with the images of other
classes through its own moving-average estimator (γ = ``gamma``), indexed by
the image's dataset id, as SogCLR / LibAUC's bimodal GCL do. See
gcl.py next to this file for the formulas.
"""
from __future__ import annotations

import lazy_loader as lazy
from pydantic import Field

from clbench import hookimpl, note_contrast, to_device
from clbench.replay import ReplayMethod, ReplayParams

from .gcl import GlobalContrastive

torch = lazy.load("torch")


class GCLParams(ReplayParams):
    gamma: float = Field(0.9, gt=0, le=1)


class GCLReplay(ReplayMethod):
    name = "gcl_replay"
    Params = GCLParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.objective = GlobalContrastive(len(learner.dataset.train), params.gamma, learner.device)

    def loss(self, batch):
        learner = self.learner
        seen = learner.stream.seen(batch.exp.index)
        text = learner.class_features(seen, template=self.params.template, grad=True)
        seen_t = to_device(seen, batch.labels.device)
        if batch.ids is None:
            raise RuntimeError("gcl_replay needs each image's dataset id: the dataset plugin's image sets must carry "
                               "'ids' through subset/concat like labels (clbench.data.base.ImageSet)")
        note_contrast(batch.labels, seen_t)  # image anchors meet every seen prompt; a text anchor, the other classes' images
        return self.objective.loss(learner.encode_images(batch.images), batch.labels, batch.ids, text, seen_t, learner.logit_scale)

    def state_dict(self):
        return {**super().state_dict(), "gcl": self.objective.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.objective.load_state_dict(state["gcl"])

    def record_extras(self):
        return {"formula": "global contrastive loss, per-anchor moving averages over negatives (SogCLR / LibAUC GCLoss_v2)",
                "gamma": self.params.gamma}


@hookimpl
def clbench_add_methods(register):
    register(GCLReplay)

"""finetune: sequential fine-tuning on each experience's data alone; the lower bound.

``loss: contrastive`` (default) is FLYP-style symmetric InfoNCE between the
batch's images and their class prompts; ``loss: ce`` is cross-entropy over
the seen classes' prompt similarities. Both towers train unless frozen.
"""
from typing import Literal

import torch

from clbench import Method, Params, hookimpl
from clbench.losses import contrastive_loss, cross_entropy_loss


class FinetuneParams(Params):
    loss: Literal["contrastive", "ce"] = "contrastive"
    template: int = 0  # which of the dataset's prompt templates builds training prompts
    freeze_text: bool = False  # keep the text tower fixed (its features are then cached)


class Finetune(Method):
    name = "finetune"
    Params = FinetuneParams

    def before_experience(self, exp) -> None:
        if self.params.freeze_text:
            for n, p in self.learner.model.named_parameters():
                if not n.startswith("visual."):
                    p.requires_grad_(False)

    def loss(self, images, labels, exp) -> torch.Tensor:
        learner = self.learner
        if self.params.loss == "contrastive":
            classes = labels.unique()
        else:
            classes = torch.tensor(learner.stream.seen(exp.index), device=labels.device)
        grad = not self.params.freeze_text
        text = learner.class_features(classes.tolist(), template=self.params.template, grad=grad)
        objective = contrastive_loss if self.params.loss == "contrastive" else cross_entropy_loss
        return objective(learner.encode_images(images), labels, text, classes, learner.logit_scale)


@hookimpl
def clbench_add_methods(register):
    register(Finetune)

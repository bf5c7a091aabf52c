"""finetune: sequential fine-tuning on each experience's data alone; the lower bound.

``loss: contrastive`` (default) is FLYP-style symmetric InfoNCE between the
batch's images and their class prompts; ``loss: ce`` is cross-entropy over
the seen classes' prompt similarities. Both towers train unless frozen.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from clbench import Method, Params, hookimpl
from clbench.facts import template_problem

from .objective import objective


class FinetuneParams(Params):
    loss: Literal["contrastive", "ce"] = "contrastive"
    template: int = Field(0, ge=0)  # which of the dataset's prompt templates builds training prompts
    freeze_text: bool = False  # keep the text tower fixed (its features are then cached)


class Finetune(Method):
    name = "finetune"
    Params = FinetuneParams

    @classmethod
    def check(cls, params, stream, train) -> dict[str, str]:
        problem = template_problem(params.template, stream)
        return {"template": problem} if problem else {}

    def before_experience(self, exp) -> None:
        if self.params.freeze_text:
            self.learner.freeze("text")

    def loss(self, batch):
        return objective(self.learner, batch, self.params.loss, self.params.template, not self.params.freeze_text)


@hookimpl
def clbench_add_methods(register):
    register(Finetune)

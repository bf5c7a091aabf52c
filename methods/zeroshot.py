"""zeroshot: CLIP as it comes, never trained; the reference that cannot forget.

Prediction is the argmax over the seen classes of the scaled cosine
similarity to each class's prompt ensemble (the Learner's default rule).
"""
from __future__ import annotations

from clbench import Method, hookimpl


class ZeroShot(Method):
    name = "zeroshot"
    trains = False

    def train(self, exp) -> None:
        pass


@hookimpl
def clbench_add_methods(register):
    register(ZeroShot)

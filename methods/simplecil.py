"""simplecil: a frozen CLIP image tower with a prototype classifier (SimpleCIL).

Reference: Zhou et al., "Revisiting class-incremental learning with pre-trained
models: generalizability and adaptivity are all you need", IJCV 2024; code
zhoudw-zdw/RevisitingCIL, models/simplecil.py (``replace_fc``: after each task,
the classifier row of every class of the task is the mean of its training
embeddings; the head is a cosine classifier, so scores are cosine similarities).
The reference has no hyper-parameters beyond the backbone.

Here the model is never trained (``trains = False``). After each experience,
class c's prototype is p_c = mean of its training images' L2-normalised features
(``learner.features(exp.train)``); prediction over the label space is

    score_c(x) = (1 − w)·cos(f(x), p_c) + w·cos(f(x), t_c),    w = ``text_weight``

with f(x) the L2-normalised image feature and t_c CLIP's prompt-ensemble text
feature; the default w = 0 is the reference's pure prototype classifier.
Classes without a prototype cannot be scored (−inf): ``scores_unseen_classes =
False``, as icarl, so upcoming experiences are not evaluated and fwt is null.

Deliberate differences: the prototypes average L2-normalised features (the
Learner's ``features``), where the reference averages the raw embeddings; the
text blend is this benchmark's option (off by default). A class met again in a
later experience (domain-incremental streams) gets the mean over all its
training images so far, which has the direction of RanPAC's domain-incremental
running sum (the reference overwrites, which for class-incremental streams is
the same thing).
"""
from __future__ import annotations

import lazy_loader as lazy
from pydantic import Field

from clbench import Method, Params, hookimpl, no_grad
from clbench.memory import nbytes

torch = lazy.load("torch")


FORMULA = "score_c = (1 - w) * cos(f(x), p_c) + w * cos(f(x), t_c); p_c = mean of class c's L2-normalised training features (Zhou et al. 2024)"


class SimpleCILParams(Params):
    text_weight: float = Field(0.0, ge=0.0, le=1.0)  # weight w of CLIP's text classifier in the blend; 0: prototypes only


class SimpleCIL(Method):
    name = "simplecil"
    Params = SimpleCILParams
    trains = False
    scores_unseen_classes = False

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.sums = None  # (num_classes, D) sum of each class's normalised training features
        self.counts = torch.zeros(learner.dataset.num_classes, device=learner.device)

    def train(self, exp) -> None:
        pass

    @no_grad
    def after_experience(self, exp) -> None:
        feats = self.learner.features(exp.train).float()
        labels = exp.train.labels.to(feats.device).long()
        if self.sums is None:
            self.sums = torch.zeros(len(self.counts), feats.shape[1], device=feats.device)
        self.sums.index_add_(0, labels, feats)
        self.counts.index_add_(0, labels, torch.ones(len(labels), device=feats.device))

    def prototypes(self, classes: list[int]) -> torch.Tensor:
        """(len(classes), D) L2-normalised prototypes; NaN rows for classes without training images."""
        if self.sums is None:
            raise RuntimeError("simplecil has no prototypes before its first experience")
        index = torch.tensor(classes, device=self.sums.device)
        protos = torch.nn.functional.normalize(self.sums[index], dim=1)
        return torch.where((self.counts[index] > 0)[:, None], protos, torch.full_like(protos, float("nan")))

    @no_grad
    def predict_features(self, features, classes):
        """(B, len(classes)) blended cosine scores from L2-normalised image features (B, D); −inf for a class without a prototype."""
        learner = self.learner
        features = features.float()
        protos = self.prototypes(classes)
        scores = features @ protos.t()
        w = self.params.text_weight
        if w:
            scores = (1 - w) * scores + w * (features @ learner.class_features(classes).float().t())
        return scores.nan_to_num(nan=float("-inf"))

    def memory_summary(self):
        if self.sums is None:
            return {"prototypes": 0}
        return {"prototypes": nbytes(self.sums[self.counts > 0])}

    def state_dict(self):
        return {"sums": self.sums, "counts": self.counts}

    def load_state_dict(self, state):
        device = self.learner.device
        self.sums = None if state["sums"] is None else state["sums"].to(device)
        self.counts = state["counts"].to(device)

    def record_extras(self):
        return {"formula": FORMULA, "text_weight": self.params.text_weight, "prototypes": int((self.counts > 0).sum()),
                "classifier": "cosine to class prototypes; upcoming experiences not scored (fwt null)"}


@hookimpl
def clbench_add_methods(register):
    register(SimpleCIL)

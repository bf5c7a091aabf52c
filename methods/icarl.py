"""icarl: iCaRL-style learning for CLIP: herding exemplars, distillation, nearest-mean-of-exemplars.

Training minimises cross-entropy over the seen classes' prompts on new and
replayed images plus ``distill_weight`` × a distillation term on the old
classes' scores: the soft cross-entropy −Σ_c softmax(z_old/T)_c ·
log softmax(z/T)_c averaged over the batch, T = ``temperature`` (PyCIL's
``_KD_loss`` in models/icarl.py, T = 2 there); ``distill_t_squared: true``
multiplies it by T² (Hinton et al. 2015's scaling, 4× the gradient at T = 2).

Prediction is the nearest class prototype (cosine to the normalised mean of a
class's normalised exemplar features, Rebuffi et al. 2017). Classes without
exemplars have no prototype and are never predicted; the classifier cannot
score upcoming classes, so test sets of upcoming experiences are not evaluated
and ``fwt`` is null (scoring them by image–text cosine would mix two scales).
"""
from __future__ import annotations

import lazy_loader as lazy
from pydantic import Field, field_validator

from clbench import hookimpl, to_device
from clbench.buffer import BufferSpec
from clbench.losses import cross_entropy_loss
from clbench.memory import nbytes
from clbench.replay import ReplayMethod, ReplayParams

torch = lazy.load("torch")


class ICaRLParams(ReplayParams):
    buffer: BufferSpec = Field(default_factory=lambda: BufferSpec(fraction=0.02, policy="herding"))
    distill_weight: float = Field(1.0, ge=0)
    temperature: float = Field(2.0, gt=0)
    distill_t_squared: bool = False  # scale the distillation by T² (default off, as PyCIL)

    @field_validator("buffer")
    @classmethod
    def _needs_exemplars(cls, buffer: BufferSpec) -> BufferSpec:
        if not (buffer.size or buffer.per_class or buffer.fraction):
            raise ValueError("icarl classifies by the mean of each class's exemplars; give the buffer a size above 0")
        return buffer


class ICaRL(ReplayMethod):
    name = "icarl"
    Params = ICaRLParams
    scores_unseen_classes = False

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.previous = None
        self.old_classes: list[int] = []
        self.prototypes: dict[int, torch.Tensor] = {}
        self.teacher_bytes = 0

    def before_experience(self, exp):
        if exp.index == 0:
            return
        learner = self.learner
        self.previous = learner.snapshot()
        self.teacher_bytes = max(self.teacher_bytes, self.previous.nbytes)  # held while training each experience after the first
        self.old_classes = learner.stream.seen(exp.index - 1)
        self.previous_text = self.previous.class_features(self.old_classes, template=self.params.template)

    def loss(self, batch):
        learner, labels = self.learner, batch.labels
        seen = learner.stream.seen(batch.exp.index)
        text = learner.class_features(seen, template=self.params.template, grad=True)
        features = learner.encode_images(batch.images)
        seen_t = to_device(seen, labels.device)
        loss = cross_entropy_loss(features, labels, text, seen_t, learner.logit_scale)
        if self.previous is None or not self.params.distill_weight:
            return loss
        T = self.params.temperature
        old_features = self.previous.encode_images(batch.images)
        target = self.previous.logit_scale * old_features @ self.previous_text.t()
        current = learner.logit_scale * features @ text[: len(self.old_classes)].t()  # seen() lists old classes first
        distill = soft_cross_entropy(current / T, target / T) * (T * T if self.params.distill_t_squared else 1.0)
        return loss + self.params.distill_weight * distill

    def after_experience(self, exp):
        super().after_experience(exp)
        self.previous = None
        learner = self.learner
        self.prototypes = {}
        if len(self.buffer):
            feats = learner.features(self.buffer.data)
            labels = self.buffer.data.labels.to(feats.device)
            for c in labels.unique().tolist():
                self.prototypes[c] = torch.nn.functional.normalize(feats[labels == c].mean(0), dim=0)

    def predict_features(self, features, classes):
        """Cosine of L2-normalised image features (B, D) to each class's prototype (B, len(classes)); −inf for a
        class without exemplars. Scoring features lets evaluation reuse each test set's features once per step."""
        if not self.prototypes:
            raise RuntimeError("icarl has no exemplars to build prototypes from; give it a buffer")
        dim = next(iter(self.prototypes.values())).shape
        missing = torch.full(dim, float("nan"), device=features.device)
        protos = torch.stack([self.prototypes.get(c, missing) for c in classes])
        scores = features @ protos.t()
        return scores.nan_to_num(nan=float("-inf"))

    def memory_summary(self):
        return {**super().memory_summary(), "frozen_models": self.teacher_bytes, "prototypes": nbytes(self.prototypes)}

    def state_dict(self):
        return {**super().state_dict(), "prototypes": dict(self.prototypes), "teacher_bytes": self.teacher_bytes}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.prototypes = {int(c): v.to(self.learner.device) for c, v in state["prototypes"].items()}
        self.teacher_bytes = int(state.get("teacher_bytes", 0))

    def record_extras(self):
        return {"prototypes": len(self.prototypes), "distill_weight": self.params.distill_weight,
                "distillation": "soft cross-entropy" + (" x T^2" if self.params.distill_t_squared else "") + " (PyCIL _KD_loss)",
                "classifier": "nearest mean of exemplars; upcoming experiences not scored (fwt null)"}


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """−Σ_c softmax(target)_c · log softmax(logits)_c, averaged over the batch; (B, C) inputs, scalar out."""
    return -(torch.nn.functional.softmax(target_logits, 1) * torch.nn.functional.log_softmax(logits, 1)).sum(1).mean()


@hookimpl
def clbench_add_methods(register):
    register(ICaRL)

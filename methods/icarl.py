"""icarl: iCaRL-style learning for CLIP: herding exemplars, distillation, nearest-mean-of-exemplars.

Training minimises cross-entropy over the seen classes' prompts on new and
replayed images plus ``distill_weight`` × a distillation term: the KL
divergence (temperature ``temperature``) between the previous model's and
the current model's scores on the old classes. Prediction is the nearest
class prototype (the normalised mean of a class's normalised exemplar
features); a class with no exemplar falls back to its prompt feature.
"""
import torch
import torch.nn.functional as F
from pydantic import Field

from clbench import hookimpl
from clbench.buffer import BufferSpec
from clbench.losses import cross_entropy_loss
from clbench.replay import ReplayMethod, ReplayParams


class ICaRLParams(ReplayParams):
    buffer: BufferSpec = Field(default_factory=lambda: BufferSpec(fraction=0.02, policy="herding"))
    distill_weight: float = Field(1.0, ge=0)
    temperature: float = Field(2.0, gt=0)


class ICaRL(ReplayMethod):
    name = "icarl"
    Params = ICaRLParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.previous = None
        self.old_classes: list[int] = []
        self.prototypes: dict[int, torch.Tensor] = {}

    def before_experience(self, exp):
        if exp.index == 0:
            return
        learner = self.learner
        self.previous = learner.snapshot()
        self.old_classes = learner.stream.seen(exp.index - 1)
        with torch.no_grad(), learner.autocast():
            tokens = learner.clip.tokenizer([learner.dataset.templates[self.params.template].format(learner.dataset.class_names[c]) for c in self.old_classes])
            self.previous_text = F.normalize(self.previous.encode_text(tokens.to(learner.device)).float(), dim=-1)

    def loss(self, images, labels, exp):
        learner = self.learner
        seen = learner.stream.seen(exp.index)
        text = learner.class_features(seen, template=self.params.template, grad=True)
        features = learner.encode_images(images)
        seen_t = torch.tensor(seen, device=labels.device)
        loss = cross_entropy_loss(features, labels, text, seen_t, learner.logit_scale)
        if self.previous is None or not self.params.distill_weight:
            return loss
        T = self.params.temperature
        with torch.no_grad():
            old_features = F.normalize(self.previous.encode_image(images).float(), dim=-1)
            target = self.previous.logit_scale.exp().clamp(max=100) * old_features @ self.previous_text.t()
        current = learner.logit_scale * features @ text[: len(self.old_classes)].t()  # seen() lists old classes first
        distill = F.kl_div(F.log_softmax(current / T, 1), F.log_softmax(target / T, 1), log_target=True, reduction="batchmean") * T * T
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
                self.prototypes[c] = F.normalize(feats[labels == c].mean(0), dim=0)

    def predict(self, images, classes):
        learner = self.learner
        features = learner.encode_images(images)
        text = learner.class_features(classes)
        protos = torch.stack([self.prototypes.get(c, text[i]) for i, c in enumerate(classes)])
        return features @ protos.t()

    def state_dict(self):
        return {**super().state_dict(), "prototypes": dict(self.prototypes)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.prototypes = {int(c): v.to(self.learner.device) for c, v in state["prototypes"].items()}

    def record_extras(self):
        return {"prototypes": len(self.prototypes), "distill_weight": self.params.distill_weight}


@hookimpl
def clbench_add_methods(register):
    register(ICaRL)

"""The Method API: what a continual-learning method is to the harness.

A method is a small class. It declares its hyper-parameters as a ``Params``
model (defaults and validation in one place, so a suite can reach every one),
and the Learner gives it everything that is shared: the model, forward passes,
the training loop, evaluation and cost meters. A fresh instance runs each cell.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .batch import Batch
    from .config import TrainConfig
    from .data.scenarios import Experience
    from .facts import ModelFacts, StreamFacts
    from .learner import Learner


class Params(BaseModel):
    """Base for a method's hyper-parameters: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Method:
    #: the name suites use; must be unique across installed plugins
    name: ClassVar[str] = ""
    #: the hyper-parameters a suite may set under this method's entry
    Params: ClassVar[type[Params]] = Params
    #: False for methods that never update the model (their cells skip fit())
    trains: ClassVar[bool] = True
    #: False for methods whose predict() cannot score classes they have not learned (e.g. a nearest-mean-of-exemplars
    #: classifier): test sets of upcoming experiences with such classes are then not evaluated (None in the
    #: accuracy matrix) and ``fwt`` is None
    scores_unseen_classes: ClassVar[bool] = True
    #: the scenarios the method is built for (as Mammoth's COMPATIBILITY); validate refuses a suite pairing it with another
    scenarios: ClassVar[tuple[str, ...]] = ("class_incremental", "domain_incremental", "dataset_incremental")

    @classmethod
    def check(cls, params: Params, stream: "StreamFacts", train: "TrainConfig", model: "ModelFacts | None" = None) -> dict[str, str]:
        """Problems of ``params`` on ``stream`` known before any data is read: {params key: what is wrong and the fix}.

        ``clbench validate`` (and ``run``, before any cell starts) calls this for every cell and
        refuses the suite on the first problem, e.g. ``{"template": "3 but stream 'x' has 1
        prompt template; use 0"}``. Facts that are None are unknown until the data is read:
        skip their checks. ``model`` (a ``clbench.facts.ModelFacts``: the image tower's kind and
        block count, the towers LoRA wraps) is passed when the method's ``check`` accepts it. The
        default finds nothing.
        """
        return {}

    def __init__(self, params: Params, learner: "Learner"):
        self.params = params
        self.learner = learner

    # --- the cell's life cycle ----------------------------------------------
    def before_experience(self, exp: "Experience") -> None:
        """Called before training on ``exp``."""

    def train(self, exp: "Experience") -> None:
        """Learn from ``exp``. The default runs the shared loop on ``self.loss``."""
        self.learner.fit(exp, self.loss)

    def loss(self, batch: "Batch") -> "torch.Tensor":
        """The objective (a scalar tensor) on one ``clbench.Batch``: preprocessed images, global labels, the
        batch's classes on the host, the experience, and which rows were replayed from the memory."""
        raise NotImplementedError(f"method '{self.name}' must implement loss() or override train()")

    def after_experience(self, exp: "Experience") -> None:
        """Called after training on ``exp`` and before it is evaluated."""

    def predict(self, images: "torch.Tensor", classes: list[int]) -> "torch.Tensor":
        """Scores (batch, len(classes)) of preprocessed images (batch, 3, S, S) over the label space ``classes``.

        The default scores ``learner.encode_images(images)`` with ``predict_features``. Override it
        when scores need more than the image tower's features (prompts chosen per image, a second
        model); evaluation then runs the images through it for every test set at every step.
        """
        return self.predict_features(self.learner.encode_images(images), classes)

    def predict_features(self, features: "torch.Tensor", classes: list[int]) -> "torch.Tensor":
        """Scores (batch, len(classes)) from L2-normalised image features (batch, D) of the model's image tower.

        The default is CLIP's zero-shot rule (``logit_scale`` × cosine to each class's prompt
        ensemble). A method whose scores depend on an image only through these features (a
        prototype or ridge classifier on a frozen tower) overrides this and not ``predict``:
        evaluation then scores each test set from its features, computed once per version of
        the image tower's weights (a frozen tower: once per cell).
        """
        learner = self.learner
        return learner.logit_scale * features @ learner.class_features(classes).t()

    @classmethod
    def scores_from_features(cls) -> bool:
        """True when scores come from ``predict_features`` (``predict`` not overridden), so evaluation may
        reuse each test set's cached image features while the image tower is unchanged."""
        return cls.predict is Method.predict

    @classmethod
    def uses_zero_shot_rule(cls) -> bool:
        """True when scores are CLIP's zero-shot rule: neither ``predict`` nor ``predict_features`` is overridden."""
        return cls.predict is Method.predict and cls.predict_features is Method.predict_features

    # --- what goes into the record and what resume needs ---------------------
    def record_extras(self) -> dict[str, Any]:
        """JSON-serialisable facts about this run to store in the record."""
        return {}

    def memory_summary(self) -> dict[str, int]:
        """Bytes the method keeps beyond the model it trains, by kind, as held at the end of the cell (or at
        its largest, where the method tracks that): ``replay_images`` (exemplars as stored), ``stored_outputs``
        (scores or features kept per exemplar), ``frozen_models`` (teacher copies), ``parameter_anchors``
        (Fisher information, anchor weights), ``prototypes``, ``adapters``, or another name of the method's
        own. ``clbench.memory.nbytes`` counts tensors in nested containers. The default keeps nothing."""
        return {}

    def buffer_summary(self) -> dict[str, Any]:
        """The replay memory for the record: ``exemplars`` (count) and ``bytes`` (as stored), plus any
        facts of the memory (policy, capacity rule). Methods without a memory keep the default."""
        return {"exemplars": 0, "bytes": 0}

    def state_dict(self) -> dict[str, Any]:
        """What resuming the cell needs beyond the model, after every experience but the last (on every rank).

        Only what ``torch.load(weights_only=True)`` reads back: tensors, numbers, str, bytes, bool, None, and
        lists/tuples/dicts/sets of them (clbench/state_check.py); anything else is refused at the first save
        with a ``UserError`` naming the key. docs/writing_methods.md section 3.2.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output on resume: runs once, after the model's weights are restored and
        before the next experience; tensors arrive on the CPU. An exception fails the cell and keeps the checkpoint."""


def no_grad(fn):
    """``torch.no_grad()`` as a decorator that imports torch only when ``fn`` is called.

    ``@torch.no_grad()`` in a class body would import torch while the plugin module loads,
    and every ``clbench validate`` / ``list`` would then pay for it.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper

"""er_ace: ER with asymmetric cross-entropy (Caccia et al., ICLR 2022), after Mammoth's models/er_ace.py.

"New insights on reducing abrupt representation change in online continual learning."
Each step mixes a replay batch from the memory into the new batch (``ReplayMethod``;
the last ``batch.n_replayed`` rows are replayed). With scores
z_c(x) = logit_scale * f(x) . g(prompt_template(c)) over the seen classes c:

    L = CE_present(new rows) + CE_seen(replayed rows)

- CE_seen: cross-entropy over every seen class (classes of experiences 0..t), mean over
  the replayed rows (0 when nothing is replayed);
- CE_present: from the second experience on (Mammoth's ``if self.task > 0``), the scores
  of the new rows are masked to the classes present among the new rows of this batch
  (the other columns filled with the dtype's lowest value, as Mammoth's ``masked_fill``),
  then cross-entropy, mean over the new rows. In the first experience nothing is masked:
  cross-entropy over the seen classes (= the experience's classes).
Mammoth adds the two means (Avalanche's ``ACECriterion`` halves their sum; not here).

Mammoth's mask, exactly: ``mask[:, present] = 1`` (``present = labels.unique()`` of the
incoming batch) and, while classes remain unseen, ``mask[:, seen_so_far.max():] = 1``.
With Mammoth's contiguous class ids per task the second rule unmasks every future class
and the highest class id seen so far. clbench's label space is the seen classes (finetune's
``loss: ce``), so future classes are not scored at all, and the highest-seen-id column is an
artifact of contiguous ids with no counterpart under a permuted class order: here the new
rows see exactly the classes present among them (the paper's rule, and Avalanche's).

Defaults: buffer ``fraction: 0.01`` (Mammoth's models/config/er_ace.yaml: seq-cifar100,
buffer 500 of 50,000 training images), reservoir; ``replay_ratio: 1`` (minibatch_size =
batch_size). Like Mammoth's COMPATIBILITY (class-il, task-il) it is offered for
class-incremental streams only.

Other deliberate differences from Mammoth:
- the memory is clbench's ReplayBuffer, re-selected after each experience (reservoir
  inclusion probability K/N over every image offered), so it holds past experiences
  only; Mammoth's reservoir is updated every step and may replay images of the current
  task already seen;
- Mammoth's CE spans its fixed head over all N classes (future ones included); here CE
  is over the seen classes' prompts (see above);
- one forward pass over the mixed batch instead of two (the same gradient for CLIP,
  which has no batch statistics);
- learning rate, optimizer, epochs and batch size are the cell's ``train`` settings
  (Mammoth's config: SGD, lr 0.03).
"""
from __future__ import annotations

from typing import Literal

import lazy_loader as lazy
from pydantic import Field, field_validator

from clbench import hookimpl, to_device
from clbench.buffer import BufferSpec
from clbench.losses import positions
from clbench.replay import ReplayMethod, ReplayParams

from .derpp import reservoir_if_unset

torch = lazy.load("torch")

FORMULA = ("ce over the classes present among the new rows (from the second experience on; all seen classes in "
           "the first) on the new rows + ce over all seen classes on the replayed rows; "
           "z = logit_scale * cos(image, class prompt) (Mammoth models/er_ace.py)")


class ERACEParams(ReplayParams):
    buffer: BufferSpec = Field(default_factory=lambda: BufferSpec(fraction=0.01, policy="reservoir"))
    loss: Literal["ce"] = "ce"  # the asymmetric loss is a cross-entropy

    @field_validator("buffer", mode="before")
    @classmethod
    def _policy_defaults_to_reservoir(cls, value):
        return reservoir_if_unset(value)


def ace_loss(learner, batch, template: int = 0):
    """ER-ACE's loss on one mixed batch (a scalar tensor); see the module docstring."""
    labels, n = batch.labels, batch.n_new
    seen = learner.stream.seen(batch.exp.index)
    seen_t = to_device(seen, labels.device)
    text = learner.class_features(seen, template=template, grad=True)
    scores = learner.logit_scale * learner.encode_images(batch.images) @ text.t()
    target = positions(seen_t, labels)  # each label's column
    new = scores[:n]
    if batch.exp.index > 0:
        present = (labels[:n, None] == seen_t[None, :]).any(0)  # (S,): classes among the new rows, no host sync
        new = new.masked_fill(~present[None, :], torch.finfo(new.dtype).min)
    loss = torch.nn.functional.cross_entropy(new, target[:n])
    if batch.n_replayed:
        loss = loss + torch.nn.functional.cross_entropy(scores[n:], target[n:])
    return loss


class ERACE(ReplayMethod):
    name = "er_ace"
    Params = ERACEParams
    scenarios = ("class_incremental", "dataset_incremental")  # new classes in every experience

    def loss(self, batch):
        return ace_loss(self.learner, batch, self.params.template)

    def record_extras(self):
        return {"formula": FORMULA,
                "defaults": "buffer fraction 0.01 reservoir, replay_ratio 1 (Mammoth models/config/er_ace.yaml, "
                            "seq-cifar100, buffer 500)"}


@hookimpl
def clbench_add_methods(register):
    register(ERACE)

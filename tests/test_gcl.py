"""gcl_replay's global contrastive loss against its closed form and hand-computed weights."""
import math

import pytest
import torch
import torch.nn.functional as F

from clbench_methods.gcl import GlobalContrastive
from clbench.losses import positions


def exact_global_loss(img, labels, txt, seen, scale):
    """The bimodal global contrastive loss on one batch, written from its definition (Yuan et al. 2022):
    image anchors: cross-entropy over every seen prompt; text anchors: one per image a, log of the mean over the
    images of other classes of exp(s(x, c_a) − s(a, c_a)); the two halves averaged."""
    logits = scale * img @ txt.t()
    image_loss = F.cross_entropy(logits, positions(seen, labels))
    terms = []
    for a in range(len(labels)):
        col = logits[:, int((seen == labels[a]).nonzero()[0, 0])]
        neg = col[labels != labels[a]]
        terms.append(torch.log(torch.exp(neg - col[a]).mean()))
    return (image_loss + torch.stack(terms).mean()) / 2


def test_gamma_one_gives_the_exact_global_loss_value_and_gradient():
    torch.manual_seed(0)
    seen = torch.tensor([7, 1, 4, 9])
    labels = torch.tensor([7, 1, 4, 4, 7, 1, 4])  # several positives per class; class 9 seen but absent
    ids = torch.tensor([10, 3, 5, 0, 2, 8, 11])
    img0, txt0 = F.normalize(torch.randn(7, 5), dim=1), F.normalize(torch.randn(4, 5), dim=1)
    img_a, txt_a = img0.clone().requires_grad_(True), txt0.clone().requires_grad_(True)
    ours = GlobalContrastive(12, gamma=1.0).loss(img_a, labels, ids, txt_a, seen, torch.tensor(4.0))
    ours.backward()
    img_b, txt_b = img0.clone().requires_grad_(True), txt0.clone().requires_grad_(True)
    exact = exact_global_loss(img_b, labels, txt_b, seen, 4.0)
    exact.backward()
    assert ours.item() == pytest.approx(exact.item(), rel=1e-5)
    assert torch.allclose(img_a.grad, img_b.grad, atol=1e-6) and torch.allclose(txt_a.grad, txt_b.grad, atol=1e-6)


def text_gradient(gcl, logits, labels, ids):
    """d(text term)/d logits for a (B, 2) logit matrix whose columns are classes 0 and 1."""
    logits = torch.tensor(logits, requires_grad=True)
    labels = torch.tensor(labels)
    gcl.text_term(logits, labels, labels, torch.tensor(ids)).backward()
    return logits.grad


def test_a_negatives_weight_depends_on_its_own_anchor_only():
    # γ = 0.5, scale 1, logits s(x, c) given directly. Batch 1: anchor id 0 (class 0, s = 1.0), negative id 9 (s = 0).
    # Batch 2: a new anchor id 1 (class 0, s = 0.7), negative id 9 (s = 0). Its estimator starts at its own
    # g = e^{-0.7}, so the negative's weight is e^{-0.7} / e^{-0.7} = 1.0 exactly. One normaliser per class
    # would have mixed in batch 1: u = 0.5·e^{-1} + 0.5·e^{-0.7} = 0.4322, weight 0.4966 / 0.4322 = 1.149.
    gcl = GlobalContrastive(10, gamma=0.5)
    text_gradient(gcl, [[1.0, 0.0], [0.0, 1.0]], [0, 1], [0, 9])
    grad = text_gradient(gcl, [[0.7, 0.0], [0.0, 1.0]], [0, 1], [1, 9])
    anchors, negatives = 2, 1  # anchors with a negative in batch 2; negatives of anchor id 1
    assert grad[1, 0].item() * anchors * negatives == pytest.approx(1.0, rel=1e-6)


def test_several_positives_of_a_class_are_averaged_not_pooled():
    # class 0 has two images in the batch, s(a, c0) = 4 and s(b, c0) = 0; x (class 1) has s(x, c0) = 0.
    # Each positive is its own anchor with one negative, first visit: weight 1 each, so
    # d/ds(a, c0) = d/ds(b, c0) = −1/3 (3 anchors: a, b and x) — shares [0.5, 0.5].
    # Pooling both into one class normaliser gives a soft minimum: shares e^{-4}/(e^{-4}+1) = 0.018 and 0.982.
    gcl = GlobalContrastive(3, gamma=0.9)
    grad = text_gradient(gcl, [[4.0, 0.0], [0.0, 0.0], [0.0, 1.0]], [0, 0, 1], [0, 1, 2])
    positives = torch.stack([grad[0, 0], grad[1, 0]])
    assert positives.tolist() == pytest.approx([-1 / 3, -1 / 3], rel=1e-6)
    assert (positives / positives.sum()).tolist() == pytest.approx([0.5, 0.5])


def test_each_anchor_follows_its_moving_average():
    gamma = 0.3
    gcl = GlobalContrastive(4, gamma=gamma)
    batches = [([[1.0, 0.0], [0.0, 1.0]], [2, 3]), ([[0.5, 0.2], [0.0, 1.0]], [2, 1]), ([[0.1, 0.0], [0.3, 2.0]], [2, 3])]
    u = {}
    for logits, ids in batches:
        L = torch.tensor(logits)
        text_gradient(gcl, logits, [0, 1], ids)
        for a, (c, other) in enumerate([(0, 1), (1, 0)]):
            g = math.exp(L[1 - a, c].item() - L[a, c].item())  # one negative: the other image
            u[ids[a]] = g if ids[a] not in u else (1 - gamma) * u[ids[a]] + gamma * g
    for i, value in u.items():
        assert math.exp(gcl.log_u[i].item()) == pytest.approx(value, rel=1e-6)
    assert math.isinf(gcl.log_u[0].item())  # never visited


def test_a_batch_of_one_class_has_no_text_anchor():
    gcl = GlobalContrastive(3, gamma=0.9)
    grad = text_gradient(gcl, [[1.0, 0.0], [2.0, 0.0]], [0, 0], [0, 1])
    assert torch.equal(grad, torch.zeros(2, 2)) and torch.isinf(gcl.log_u).all()


def test_state_round_trip():
    gcl = GlobalContrastive(5, gamma=0.5)
    text_gradient(gcl, [[1.0, 0.0], [0.0, 1.0]], [0, 1], [4, 2])
    other = GlobalContrastive(5, gamma=0.5)
    other.load_state_dict(gcl.state_dict())
    assert torch.equal(other.log_u, gcl.log_u)


def test_a_plugin_image_set_without_ids_trains_everything_but_gcl_which_says_why(tmp_path):
    """A dataset plugin's own ImageSet written to the base API before ids existed."""
    from pathlib import Path

    from clbench import DatasetPlugin, hookimpl
    from clbench.data.base import Dataset, ImageSet
    from clbench.plugins import Plugins, make_plugin_manager
    from clbench.runner import run_cell
    from clbench.suite import load_suite
    from clbench.testing import tiny_suite, write_suite

    class PlainSet(ImageSet):
        def __init__(self, labels):
            self.labels, self.domains = labels, None

        def subset(self, index):
            return PlainSet(self.labels[torch.as_tensor(index, dtype=torch.long)])

        def concat(self, other):
            return PlainSet(torch.cat([self.labels, other.labels]))

        def load(self, index):
            out = torch.zeros(len(index), 3, 32, 32, dtype=torch.uint8)
            out[torch.arange(len(index)), self.labels[index] % 3] = 200
            return out

        def stored_bytes(self):
            return 8 * len(self)

    class Plain(DatasetPlugin):
        name = "plain"

        @classmethod
        def build(cls, options):
            labels = torch.arange(4).repeat_interleave(6)
            return Dataset("plain", ["red", "green", "blue", "grey"], ["a {} square"], PlainSet(labels), PlainSet(labels[::2]))

    class Plugin:
        @hookimpl
        def clbench_add_datasets(self, register):
            register(Plain)

    pm = make_plugin_manager()
    pm.register(Plugin())
    plugins = Plugins(pm)
    status = {}
    for entry in ["finetune", {"name": "er", "buffer": {"size": 4}}, {"name": "gcl_replay", "buffer": {"size": 4}}]:
        suite = tiny_suite([entry], streams=[{"dataset": "plain", "steps": 2}])
        cell = load_suite(write_suite(Path(tmp_path) / "s.yaml", suite), plugins).cells[0]
        record = run_cell(cell, plugins)
        status[cell.method] = (record["status"], record.get("error") or "")
    assert status["finetune"][0] == status["er"][0] == "done"
    assert status["gcl_replay"][0] == "failed" and "carry 'ids'" in status["gcl_replay"][1]

"""ewc: the penalty and its gradient on a 3-parameter toy, the Fisher and its online recursion, a run and a resume."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clbench import Batch
from clbench.data.base import InMemoryImageSet
from clbench_methods.ewc import EWC, EWCParams, penalty
from clbench_methods.objective import objective


def test_penalty_value_and_gradient_on_three_parameters():
    theta = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    anchor, fisher = torch.tensor([0.0, 2.0, 5.0]), torch.tensor([1.0, 4.0, 0.5])
    value = penalty({"w": theta}, {"w": fisher}, {"w": anchor})
    assert value.item() == pytest.approx(1.0 * 1 + 4.0 * 0 + 0.5 * 4)  # Σ F (θ − θ*)² = 3
    value.backward()
    assert theta.grad.tolist() == pytest.approx([2.0, 0.0, -2.0])  # 2 F (θ − θ*)


class Toy:
    """A fake Learner: 'images' are uint8 (N, 3, 1, 1) pixels, features F.normalize(x @ W), fixed prompts."""

    def __init__(self, batch_size=4):
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, 3))
        self.text = F.normalize(torch.randn(4, 3), dim=1)
        self.device = torch.device("cpu")
        self.seed = 0
        self.logit_scale = torch.tensor(5.0)
        self.train_config = SimpleNamespace(batch_size=batch_size)
        self.stream = SimpleNamespace(experiences=[None] * 3, seen=lambda t: [0, 1, 2, 3][: 2 + 2 * t])

    def trainable_parameters(self):
        return {"w": self.w}

    def preprocess(self, images):
        return images.float().flatten(1) / 255

    def encode_images(self, x):
        return F.normalize(x @ self.w, dim=1)

    def class_features(self, classes, template=0, grad=False):
        return self.text[torch.tensor(list(classes))]


def experience(index, classes, n=6):
    g = torch.Generator().manual_seed(index)
    images = torch.randint(1, 255, (n, 3, 1, 1), dtype=torch.uint8, generator=g)
    labels = torch.tensor([classes[i % len(classes)] for i in range(n)])
    return SimpleNamespace(index=index, classes=classes, train=InMemoryImageSet(images, labels))


def squared_gradients(toy, exp, loss, rows):
    """Σ over the given row groups of (∂ objective / ∂W)², each group one gradient batch."""
    total = torch.zeros_like(toy.w)
    for index in rows:
        images, labels = exp.train.images[index], exp.train.labels[index]
        batch = Batch(toy.preprocess(images), labels, labels.unique().tolist(), exp)
        (grad,) = torch.autograd.grad(objective(toy, batch, loss, 0), [toy.w])
        total += grad.square()
    return total


@pytest.mark.parametrize("loss", ["ce", "contrastive"])
def test_fisher_is_the_mean_squared_batch_gradient_and_gets_the_online_recursion(loss):
    toy = Toy()
    method = EWC(EWCParams(loss=loss, gamma=0.5, fisher_batch_size=6), toy)
    first, second = experience(0, [0, 1]), experience(1, [2, 3])
    method.after_experience(first)
    f1 = squared_gradients(toy, first, loss, [torch.arange(6)])  # one batch of all six images
    assert torch.allclose(method.fisher["w"], f1, atol=1e-6)
    assert torch.equal(method.anchors["w"], toy.w.detach())
    with torch.no_grad():
        toy.w.add_(0.3)  # "training" on the second experience moves θ
    method.after_experience(second)
    f2 = squared_gradients(toy, second, loss, [torch.arange(6)])
    assert torch.allclose(method.fisher["w"], 0.5 * f1 + f2, atol=1e-6)  # F ← γ F + F_new
    assert torch.equal(method.anchors["w"], toy.w.detach())
    assert [h["experience"] for h in method.history] == [0, 1] and method.history[0]["images"] == 6


def test_per_image_fisher_averages_each_images_squared_gradient_and_the_cap_takes_a_subset():
    toy = Toy()
    exp = experience(0, [0, 1])
    method = EWC(EWCParams(fisher_batch_size=1), toy)
    fisher, images, batches = method.fisher_information(exp)
    assert (images, batches) == (6, 6)
    assert torch.allclose(fisher["w"], squared_gradients(toy, exp, "ce", [[i] for i in range(6)]) / 6, atol=1e-6)
    _, images, batches = EWC(EWCParams(fisher_images=5), toy).fisher_information(exp)  # batches of 4 (train batch size)
    assert (images, batches) == (5, 2)


def test_loss_adds_the_weighted_penalty_only_once_a_fisher_exists():
    toy = Toy()
    exp = experience(1, [2, 3])
    batch = Batch(toy.preprocess(exp.train.images), exp.train.labels, [2, 3], exp)
    method = EWC(EWCParams(e_lambda=7.0), toy)
    base = objective(toy, batch, "ce", 0)
    assert method.loss(batch).item() == pytest.approx(base.item())
    method.fisher, method.anchors = {"w": torch.full((3, 3), 2.0)}, {"w": toy.w.detach() - 0.1}
    assert method.loss(batch).item() == pytest.approx(base.item() + 7.0 * 2.0 * 9 * 0.01, rel=1e-6)
    (grad,) = torch.autograd.grad(method.loss(batch) - objective(toy, batch, "ce", 0), [toy.w])
    assert torch.allclose(grad, torch.full((3, 3), 2 * 7.0 * 2.0 * 0.1))  # 2 λ F (θ − θ*)


def test_contrastive_fisher_on_single_images_is_refused_by_check():
    from clbench.facts import StreamFacts

    stream = StreamFacts(label="s", dataset="synthetic", scenario="class_incremental", steps=3, num_templates=1)
    train = SimpleNamespace(batch_size=32)
    assert set(EWC.check(EWCParams(loss="contrastive", fisher_batch_size=1), stream, train)) == {"fisher_batch_size"}
    assert EWC.check(EWCParams(fisher_batch_size=1), stream, train) == {}


def test_ewc_runs_and_records_its_formula_and_anchors(plugins):
    from clbench.testing import run_method

    record = run_method(EWC, {"e_lambda": 100.0, "gamma": 0.9}, plugins=plugins)
    assert record["status"] == "done", record.get("error")
    state = record["method_state"]
    assert state["e_lambda"] == 100.0 and state["gamma"] == 0.9 and state["loss"] == "ce"
    assert "ewc_on" in state["formula"] and state["fisher_batch_size"] == 32
    assert [h["experience"] for h in state["fisher"]] == [0, 1]  # none after the last experience
    assert all(h["images"] == 24 and h["fisher_mean"] > 0 for h in state["fisher"])
    assert record["memory"]["bytes"]["parameter_anchors"] > 0
    assert EWCParams() == EWCParams(loss="ce", template=0, e_lambda=10.0, gamma=1.0, fisher_batch_size=None, fisher_images=None)


def test_resumed_ewc_cell_gives_the_same_record(tmp_path, plugins):
    from clbench.plugins import Plugins, make_plugin_manager
    from clbench.runner import run_cell

    from .test_reliability import Interrupt, cells_of, stable

    plugins.methods.register(EWC.name, EWC, "test")
    cell = cells_of(tmp_path, [{"name": "ewc", "e_lambda": 1000.0, "gamma": 0.5, "fisher_batch_size": 8}], plugins)[0]
    uninterrupted = run_cell(cell, plugins, checkpoints=tmp_path / "a")
    interrupted = Plugins(make_plugin_manager())
    interrupted.methods.register(EWC.name, EWC, "test")
    interrupted.pm.register(Interrupt(2))  # stops in experience 2: the checkpoint after experience 1 exists
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, interrupted, checkpoints=tmp_path / "b")
    resumed = run_cell(cell, plugins, checkpoints=tmp_path / "b")
    assert resumed["cost"]["resumed_at_experience"] == 2
    assert uninterrupted["status"] == "done"
    assert stable(resumed) == stable(uninterrupted)

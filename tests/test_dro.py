"""dro_replay's estimators against hand computations, and its one difference from er: the class weights."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clbench import Batch
from clbench_methods.dro import GroupDRO, KLDRO
from clbench_methods.objective import objective, objective_by_class
from clbench.testing import run_method

L = torch.tensor([0.5, 2.0, 1.0, 3.5])


# --- KL-DRO ---------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.5, 1.0, 3.0])
def test_kl_weights_are_softmax_when_gamma_is_one(lam):
    p = KLDRO(lam, gamma=1.0).weights(L)
    assert torch.allclose(p / len(L), torch.softmax(L / lam, 0), atol=1e-6)


def test_kl_normaliser_follows_the_moving_average():
    lam, gamma = 2.0, 0.3
    dro = KLDRO(lam, gamma)
    u = None
    for batch in [L, L * 0.5, torch.tensor([4.0, 0.1, 0.2, 0.3]), L + 1]:
        g = torch.exp(batch / lam).mean().item()
        u = g if u is None else (1 - gamma) * u + gamma * g  # the first batch initialises u
        p = dro.weights(batch)
        assert math.exp(dro.log_u.item()) == pytest.approx(u, rel=1e-5)
        assert torch.allclose(p, torch.exp(batch / lam) / u, rtol=1e-5)


def test_kl_gradient_in_the_exact_balanced_case_is_that_of_the_log_mean_exp():
    lam = 0.7
    a = L.clone().requires_grad_(True)
    value, _ = KLDRO(lam, gamma=1.0).loss(a)  # shares default to L_c / C: a class-balanced batch
    value.backward()
    b = L.clone().requires_grad_(True)
    exact = lam * torch.log(torch.exp(b / lam).mean())
    exact.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    assert value.item() == pytest.approx(exact.item(), rel=1e-6)


def test_kl_weights_multiply_the_class_shares():
    # shares s = (0.1, 0.3), L = (1, 2), λ = 1, γ = 1: p = e^L / mean e^L = (0.538, 1.462); d/ds = p
    shares = torch.tensor([0.1, 0.3], requires_grad=True)
    loss, p = KLDRO(1.0, 1.0).loss(torch.tensor([1.0, 2.0]), shares)
    loss.backward()
    mean = (math.e + math.e**2) / 2
    assert shares.grad.tolist() == pytest.approx([math.e / mean, math.e**2 / mean], rel=1e-6)
    assert p.tolist() == pytest.approx(shares.grad.tolist())


def test_kl_survives_huge_losses():
    p = KLDRO(0.01, 0.9).weights(torch.tensor([500.0, 10.0]))
    assert torch.isfinite(p).all()


# --- Group-DRO ------------------------------------------------------------------

def test_group_dro_follows_sagawa_exponentiated_gradient_over_every_seen_class():
    eta = 0.5
    dro = GroupDRO(10, eta)
    dro.add_classes([3, 5, 9])
    q = {3: 1 / 3, 5: 1 / 3, 9: 1 / 3}
    for classes, losses in [([3, 9], [1.0, 2.0]), ([5, 9], [0.5, 4.0])]:
        loss, applied = dro.loss(torch.tensor(classes), torch.tensor(losses))
        for c, l in zip(classes, losses):
            q[c] *= math.exp(eta * l)  # absent classes: exp(η·0) = 1
        total = sum(q.values())
        q = {c: v / total for c, v in q.items()}
        assert dro.weights() == pytest.approx(q)
        # Σ_c q_c L_c over the batch's classes, absent classes contributing 0, no renormalisation over the batch
        assert loss.item() == pytest.approx(sum(q[c] * l for c, l in zip(classes, losses)))
        assert applied.tolist() == pytest.approx([q[c] for c in classes])


def test_group_dro_loss_is_not_rescaled_by_the_weight_of_the_classes_present():
    # three classes with q = (0.2, 0.47, 0.33) after the update; the batch holds classes 0 and 1 with L = (1, 1):
    # Sagawa's loss is 0.2 + 0.47 = 0.67; dividing by the present mass (0.67) would give 1.0, a step ×1.49
    dro = GroupDRO(3, eta=1e-9)
    dro.add_classes([0, 1, 2])
    dro.log_q = torch.log(torch.tensor([0.2, 0.47, 0.33]))
    loss, _ = dro.loss(torch.tensor([0, 1]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx(0.67, rel=1e-6)


def test_group_dro_gradient_is_q():
    dro = GroupDRO(4, eta=0.1)
    dro.add_classes([0, 1, 2, 3])
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    loss, q = dro.loss(torch.tensor([1, 3]), losses)
    loss.backward()
    assert torch.allclose(losses.grad, q)


def test_new_classes_join_with_the_mean_weight():
    dro = GroupDRO(5, eta=1.0)
    dro.add_classes([0, 1])
    dro.loss(torch.tensor([0]), torch.tensor([math.log(3.0)]))  # q = (3/4, 1/4)
    dro.add_classes([0, 1, 2])  # class 2 joins with mean(3/4, 1/4) = 1/2, then all renormalise by 3/2
    assert dro.weights() == pytest.approx({0: 0.5, 1: 1 / 6, 2: 1 / 3})


# --- er's objective, split per class --------------------------------------------

def stub_learner(seen, batch_labels):
    torch.manual_seed(0)
    text = F.normalize(torch.randn(10, 4), dim=1)
    return SimpleNamespace(
        logit_scale=torch.tensor(3.0),
        class_features=lambda classes, template=0, grad=False: text[torch.tensor(classes)],
        encode_images=lambda x: F.normalize(x, dim=1), stream=SimpleNamespace(seen=lambda t: seen),
    )


@pytest.mark.parametrize("loss", ["contrastive", "ce"])
def test_class_shares_add_up_to_ers_loss_value_and_gradient(loss):
    labels = [4, 1, 4, 7, 4]  # unbalanced: 3, 1, 1 images
    learner = stub_learner([1, 4, 7, 2], labels)
    x0 = torch.randn(5, 4)
    x_a, x_b = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    exp = SimpleNamespace(index=1)
    y = torch.tensor(labels)
    terms = objective_by_class(learner, Batch(x_a, y, [1, 4, 7], exp), loss)
    assert terms.classes.tolist() == [1, 4, 7]
    whole = objective(learner, Batch(x_b, y, [1, 4, 7], exp), loss)
    assert terms.share.sum().item() == pytest.approx(whole.item(), rel=1e-6)
    terms.share.sum().backward()
    whole.backward()
    assert torch.allclose(x_a.grad, x_b.grad, atol=1e-6)


def test_class_mean_loss_by_hand_for_ce():
    # ce over seen (1, 4): image terms −log softmax; class 4 has two images, its L_c is their mean
    learner = stub_learner([1, 4], [4, 1, 4])
    learner.class_features = lambda classes, template=0, grad=False: torch.eye(2)[: len(classes)]
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # s = 3·cos: rows (3, 0), (0, 3), (0, 3)
    terms = objective_by_class(learner, Batch(x, torch.tensor([4, 1, 4]), [1, 4], SimpleNamespace(index=1)), "ce")
    right, wrong = math.log(1 + math.exp(-3)), math.log(1 + math.exp(3))  # label 4 is column 1
    # image 0 (label 4, scores (3, 0)): wrong; image 1 (label 1, (0, 3)): wrong; image 2 (label 4, (0, 3)): right
    assert terms.mean.tolist() == pytest.approx([wrong, (wrong + right) / 2], rel=1e-6)
    assert terms.share.tolist() == pytest.approx([wrong / 3, (wrong + right) / 3], rel=1e-6)


def test_uniform_update_is_exactly_er(plugins):
    stream = {"dataset": "synthetic", "scenario": "class_incremental", "steps": 2, "num_classes": 4,
              "train_per_class": 8, "test_per_class": 4, "world_domains": ["clean"]}
    buffer = {"size": 6}
    er = run_method(plugins.methods.get("er"), {"buffer": buffer}, stream=stream, plugins=plugins)
    uniform = run_method(plugins.methods.get("dro_replay"), {"buffer": buffer, "update": "uniform"}, stream=stream, plugins=plugins)
    assert er["status"] == uniform["status"] == "done"
    for key in ("acc_matrix", "metrics", "train_loss", "initial_acc", "buffer", "class_order"):
        assert er[key] == uniform[key], key
    weights = uniform["method_state"]["class_weights"]
    assert all(w == 1.0 for step in weights for w in step["weights"].values())
    assert set(weights[1]["weights"]) == {str(c) for c in uniform["class_order"]}  # replay brings old classes back


def test_recorded_weights_are_the_ones_applied(plugins):
    stream = {"dataset": "synthetic", "scenario": "class_incremental", "steps": 2, "num_classes": 4,
              "train_per_class": 8, "test_per_class": 4, "world_domains": ["clean"]}
    r = run_method(plugins.methods.get("dro_replay"), {"buffer": {"size": 6}, "update": "eg", "eta": 0.5},
                   stream=stream, plugins=plugins)
    first, second = r["method_state"]["class_weights"]
    assert len(first["weights"]) == 2 and len(second["weights"]) == 4
    # eg: q sums to 1 over the seen classes, so the weights applied in the first experience are about 1/2
    assert sum(first["weights"].values()) == pytest.approx(1.0, abs=0.05)
    assert all(n >= 1 for n in second["steps"].values())

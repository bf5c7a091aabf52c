"""wise_ft, simplecil and ranpac: their maths by hand on tiny inputs, and one tiny cell each."""
from types import SimpleNamespace

import pytest
import torch

from clbench.testing import run_method
from clbench_methods.ranpac import RanPAC, accumulate, choose_ridge, project, random_projection, ridge_solve
from clbench_methods.simplecil import SimpleCIL
from clbench_methods.wise_ft import WiseFT


class FakeLearner:
    """The few Learner members these methods use, on given tensors: images *are* their features."""

    def __init__(self, weights=None, num_classes=3, text=None):
        self._weights = weights or {}
        self.changed = 0
        self.device = torch.device("cpu")
        self.seed = 0
        self.dataset = SimpleNamespace(num_classes=num_classes)
        self.text = text

    def weights(self):
        return self._weights

    def weights_changed(self):
        self.changed += 1

    def features(self, image_set):
        return image_set.feats

    def encode_images(self, images):
        return images

    def class_features(self, classes, template=None, grad=False):
        return self.text[torch.tensor(classes)]


def experience(feats, labels, index=0):
    labels = torch.tensor(labels)
    return SimpleNamespace(index=index, classes=sorted(set(labels.tolist())),
                           train=SimpleNamespace(feats=torch.tensor(feats, dtype=torch.float32), labels=labels))


# --- wise_ft -------------------------------------------------------------------------------------------------
def test_wise_ft_interpolates_every_floating_weight_with_the_initial_ones():
    weights = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(-4.0), "steps": torch.tensor(7)}
    learner = FakeLearner(weights)
    method = WiseFT(WiseFT.Params(alpha=0.25), learner)  # α: weight of the fine-tuned model
    weights["a"].copy_(torch.tensor([3.0, 6.0]))  # "fine-tuned"
    weights["b"].fill_(0.0)
    weights["steps"].fill_(9)
    method.after_experience(None)
    assert weights["a"].tolist() == [0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 6]  # [1.5, 3.0]
    assert weights["b"].item() == 0.75 * -4.0
    assert weights["steps"].item() == 9  # integer buffers untouched
    assert learner.changed == 1
    assert method.memory_summary() == {"frozen_models": 3 * 4}  # θ_0: the floating weights only
    assert "alpha * theta_ft" in method.record_extras()["formula"]


@pytest.mark.parametrize("alpha, expected", [(0.0, [1.0, 2.0]), (1.0, [3.0, 6.0])])
def test_wise_ft_alpha_ends_are_zero_shot_and_finetune(alpha, expected):
    weights = {"a": torch.tensor([1.0, 2.0])}
    method = WiseFT(WiseFT.Params(alpha=alpha), FakeLearner(weights))
    weights["a"].copy_(torch.tensor([3.0, 6.0]))
    method.after_experience(None)
    assert weights["a"].tolist() == expected


# --- simplecil -----------------------------------------------------------------------------------------------
def test_simplecil_prototypes_and_scores_by_hand():
    s = 2 ** -0.5
    method = SimpleCIL(SimpleCIL.Params(), FakeLearner(num_classes=3))
    method.after_experience(experience([[1, 0], [0, 1], [1, 0]], [0, 0, 1]))
    # class 0: mean([1,0],[0,1]) = [.5,.5] -> normalised [s, s]; class 1: [1, 0]; class 2: none
    assert torch.allclose(method.prototypes([0, 1]), torch.tensor([[s, s], [1.0, 0.0]]))
    scores = method.predict(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [0, 1, 2])
    assert torch.allclose(scores[:, :2], torch.tensor([[s, 1.0], [s, 0.0]]))
    assert torch.isinf(scores[:, 2]).all() and (scores[:, 2] < 0).all()  # no prototype, never predicted
    # class 1 seen again (domain-incremental): the mean over all its images, [1,0] and [0,1] -> [s, s]
    method.after_experience(experience([[0, 1]], [1], index=1))
    assert torch.allclose(method.prototypes([1]), torch.tensor([[s, s]]))
    assert method.record_extras()["prototypes"] == 2
    assert method.memory_summary() == {"prototypes": 2 * 2 * 4}


def test_simplecil_text_weight_blends_the_two_cosine_matrices():
    text = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    method = SimpleCIL(SimpleCIL.Params(text_weight=0.25), FakeLearner(num_classes=2, text=text))
    method.after_experience(experience([[1, 0], [0, 1]], [0, 1]))
    scores = method.predict(torch.tensor([[1.0, 0.0]]), [0, 1])
    # prototypes [1,0], [0,1] -> cos (1, 0); text cos (0, 1); 0.75*(1,0) + 0.25*(0,1)
    assert torch.allclose(scores, torch.tensor([[0.75, 0.25]]))


# --- ranpac --------------------------------------------------------------------------------------------------
def test_ranpac_ridge_solution_by_hand_on_three_samples():
    H = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    Y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    G, Q = torch.zeros(2, 2), torch.zeros(2, 2)
    accumulate(G, Q, H, Y)
    assert G.tolist() == [[2, 1], [1, 2]] and Q.tolist() == [[2, 0], [1, 1]]
    # (G + I)^-1 = [[3, -1], [-1, 3]] / 8, times Q
    assert torch.allclose(ridge_solve(G, Q, 1.0), torch.tensor([[5.0, -1.0], [1.0, 3.0]]) / 8)
    assert project(H, None) is not None and torch.equal(project(H, None), H)
    assert torch.equal(project(torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 2.0], [3.0, 1.0]])), torch.tensor([[0.0, 1.0]]))


def test_ranpac_classifier_does_not_depend_on_the_experience_order():
    g = torch.Generator().manual_seed(0)
    W = random_projection(8, 64, seed=3, device="cpu")
    feats = [torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1) for n in (10, 7)]
    ys = [torch.nn.functional.one_hot(torch.tensor(c), 4).float() for c in ([0, 1] * 5, [2, 3, 2, 3, 2, 3, 2])]
    solutions = []
    for order in ((0, 1), (1, 0)):
        G, Q = torch.zeros(64, 64), torch.zeros(64, 4)
        for i in order:
            accumulate(G, Q, project(feats[i], W), ys[i])
        solutions.append(ridge_solve(G, Q, 0.1))
    assert torch.allclose(solutions[0], solutions[1], atol=1e-5, rtol=1e-4)
    assert torch.equal(W, random_projection(8, 64, seed=3, device="cpu"))  # W is redrawn the same from the seed


@pytest.mark.parametrize("n, width", [(12, 40), (40, 6)])  # dual (n < M) and primal branches
def test_ranpac_ridge_choice_matches_the_reference_grid_search(n, width):
    g = torch.Generator().manual_seed(1)
    H = torch.relu(torch.randn(n, width, generator=g)).double()
    Y = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=g), 3).double()
    ridge, losses = choose_ridge(H, Y, torch.Generator().manual_seed(5))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    H, Y = H[order], Y[order]
    k = int(n * 0.8)
    reference = []  # RanPAC.py optimise_ridge_parameter, in float64
    for lam in 10.0 ** torch.arange(-8, 9, dtype=torch.float64):
        Wo = torch.linalg.solve(H[:k].t() @ H[:k] + lam * torch.eye(width, dtype=torch.float64), H[:k].t() @ Y[:k])
        reference.append(float(torch.nn.functional.mse_loss(H[k:] @ Wo, Y[k:])))
    assert losses == pytest.approx(reference, rel=1e-6, abs=1e-9)
    assert ridge == 10.0 ** (min(range(17), key=lambda i: reference[i]) - 8)


def test_ranpac_params_default_to_the_reference():
    params = RanPAC.Params()
    assert params.projection_dim == 10000 and params.ridge is None


# --- one tiny cell each --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, params", [
    (WiseFT, {"alpha": 0.5}),
    (SimpleCIL, {}),
    (SimpleCIL, {"text_weight": 0.5}),
    (RanPAC, {"projection_dim": 256}),
    (RanPAC, {"projection_dim": 0, "ridge": 1.0}),
])
def test_each_baseline_runs_a_tiny_cell(cls, params, plugins):
    record = run_method(cls, params, plugins=plugins)
    assert record["status"] == "done", record.get("traceback")
    extras = record["method_state"]
    assert "formula" in extras
    if cls is not WiseFT:
        # frozen classifiers: upcoming experiences are not scored
        assert record["acc_matrix"][0][1] is None and record["acc_matrix"][-1][0] is not None
    if cls is RanPAC:
        assert len(extras["ridges"]) == 3


def test_ranpac_never_predicts_a_class_it_has_not_learned():
    """A label space over every class (X-TAIL) holds classes without training images: their score is −inf, not 0."""
    method = RanPAC(RanPAC.Params(projection_dim=0, ridge=1.0), FakeLearner(num_classes=3))
    method.after_experience(experience([[1.0, 0.0], [0.0, 1.0]], [0, 1]))
    scores = method.predict_features(torch.tensor([[-1.0, -1.0]]), [0, 1, 2])  # scores of 0 and 1 are negative
    assert torch.isfinite(scores[:, :2]).all() and scores[0, :2].max() < 0
    assert scores[0, 2] == float("-inf") and scores.argmax().item() in (0, 1)

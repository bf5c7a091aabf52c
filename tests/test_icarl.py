"""iCaRL's distillation scale (PyCIL's reference) and its nearest-mean classifier."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clbench import Batch
from clbench_methods.icarl import ICaRL, ICaRLParams, soft_cross_entropy


def test_soft_cross_entropy_by_hand():
    # target softmax (3/4, 1/4), log softmax of the student (log 1/4, log 3/4)
    value = soft_cross_entropy(torch.tensor([[0.0, math.log(3)]]), torch.tensor([[math.log(3), 0.0]]))
    assert value.item() == pytest.approx(-(0.75 * math.log(0.25) + 0.25 * math.log(0.75)), rel=1e-6)


def fake_icarl(**params):
    """An ICaRL whose learner and previous model are fixed linear maps, after one experience of classes (0, 1)."""
    torch.manual_seed(0)
    text = F.normalize(torch.randn(3, 4), dim=1)
    learner = SimpleNamespace(
        class_features=lambda classes, template=0, grad=False: text[torch.tensor(classes)],
        encode_images=lambda x: F.normalize(x, dim=1), logit_scale=torch.tensor(10.0),
        stream=SimpleNamespace(seen=lambda t: [0, 1, 2][: 2 + t]),
    )
    previous = SimpleNamespace(encode_images=lambda x: F.normalize(x.flip(1), dim=1), logit_scale=torch.tensor(10.0))
    return SimpleNamespace(params=ICaRLParams(**params), learner=learner, previous=previous,
                           previous_text=text[:2], old_classes=[0, 1])


def gradient(method, images, labels):
    x = images.clone().requires_grad_(True)
    ICaRL.loss(method, Batch(x, labels, sorted(set(labels.tolist())), SimpleNamespace(index=1))).backward()
    return x.grad


def test_distillation_defaults_to_pycils_scale_and_t_squared_multiplies_its_gradient_by_t2():
    images, labels = torch.randn(5, 4), torch.tensor([0, 2, 1, 2, 2])
    T = 2.0
    g0 = gradient(fake_icarl(distill_weight=0.0), images, labels)  # classification only
    g1 = gradient(fake_icarl(temperature=T), images, labels)
    g2 = gradient(fake_icarl(temperature=T, distill_t_squared=True), images, labels)
    assert torch.allclose(g2 - g0, T * T * (g1 - g0), atol=1e-6)
    assert (g1 - g0).abs().max() > 1e-4  # the distillation term really acts


def test_nearest_mean_scores_prototypes_and_never_predicts_a_class_without_exemplars():
    method = SimpleNamespace(prototypes={3: torch.tensor([1.0, 0.0]), 5: torch.tensor([0.0, 1.0])})
    scores = ICaRL.predict_features(method, F.normalize(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), dim=1), [5, 7, 3])
    assert scores[:, 1].tolist() == [float("-inf")] * 2
    assert scores[0, 2].item() == pytest.approx(2 / math.sqrt(5)) and scores[1, 0].item() == pytest.approx(1.0)
    assert scores.argmax(1).tolist() == [2, 0]


def test_icarl_leaves_upcoming_experiences_unscored_and_fwt_null(plugins):
    from clbench.testing import run_method

    r = run_method(plugins.methods.get("icarl"), {"buffer": {"size": 12, "policy": "herding"}}, plugins=plugins)
    A = r["acc_matrix"]
    assert r["status"] == "done"
    assert all(A[t][j] is None for t in range(3) for j in range(t + 1, 3))
    assert all(A[t][j] is not None for t in range(3) for j in range(t + 1))
    assert r["metrics"]["fwt"] is None and r["metrics"]["forgetting"] is not None

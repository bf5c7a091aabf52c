import math

import pytest
import torch
import torch.nn.functional as F

from clbench.losses import contrastive_loss, cross_entropy_loss, positions


def test_positions():
    assert positions(torch.tensor([7, 2, 5]), torch.tensor([5, 7, 7, 2])).tolist() == [2, 0, 0, 1]


def test_contrastive_loss_matches_a_hand_computation():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    labels, classes, scale = torch.tensor([3, 3, 9]), torch.tensor([3, 9]), 2.0
    s = scale * img @ txt.t()  # rows: images, cols: classes 3, 9
    i2t = [-(s[0, 0] - torch.logsumexp(s[0], 0)), -(s[1, 0] - torch.logsumexp(s[1], 0)), -(s[2, 1] - torch.logsumexp(s[2], 0))]
    # text 3 has two positive images (0 and 1); text 9 has one (image 2)
    t2i = [
        torch.logsumexp(s[:, 0], 0) - torch.logsumexp(s[:2, 0], 0),
        torch.logsumexp(s[:, 1], 0) - s[2, 1],
    ]
    expected = (sum(i2t) / 3 + sum(t2i) / 2) / 2
    assert contrastive_loss(img, labels, txt, classes, scale).item() == pytest.approx(expected.item(), rel=1e-6)


def test_contrastive_loss_with_distinct_classes_is_clip_loss():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([10, 11, 12, 13])
    logits = 5 * img @ txt.t()
    clip = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4))) / 2
    assert contrastive_loss(img, labels, txt, labels, 5.0).item() == pytest.approx(clip.item(), rel=1e-6)


def test_cross_entropy_over_seen_classes():
    img = torch.tensor([[1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = cross_entropy_loss(img, torch.tensor([4]), txt, torch.tensor([4, 1]), 1.0)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)))

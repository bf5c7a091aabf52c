"""The maths of the replay methods and the buffer, against hand computations."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from clbench.buffer import BufferSpec, ReplayBuffer, herding_order, split_quota
from clbench.data.base import InMemoryImageSet
from clbench.dro import GroupDRO, KLDRO, per_class_mean
from clbench.gcl import GlobalContrastive
from clbench.losses import positions

L = torch.tensor([0.5, 2.0, 1.0, 3.5])


# --- DRO ----------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.5, 1.0, 3.0])
def test_kl_weights_are_softmax_when_gamma_is_one(lam):
    p = KLDRO(lam, gamma=1.0).weights(L)
    assert torch.allclose(p / len(L), torch.softmax(L / lam, 0), atol=1e-6)


def test_kl_normaliser_follows_the_moving_average():
    lam, gamma = 2.0, 0.3
    dro = KLDRO(lam, gamma)
    batches = [L, L * 0.5, torch.tensor([4.0, 0.1, 0.2, 0.3]), L + 1]
    u = None
    for batch in batches:
        g = torch.exp(batch / lam).mean().item()
        u = g if u is None else (1 - gamma) * u + gamma * g  # first batch initialises u
        p = dro.weights(batch)
        assert math.exp(dro.log_u.item()) == pytest.approx(u, rel=1e-5)
        assert torch.allclose(p, torch.exp(batch / lam) / u, rtol=1e-5)


def test_kl_gradient_in_the_exact_case_is_that_of_the_log_mean_exp():
    lam = 0.7
    a = L.clone().requires_grad_(True)
    KLDRO(lam, gamma=1.0).loss(a).backward()
    b = L.clone().requires_grad_(True)
    exact = lam * torch.log(torch.exp(b / lam).mean())
    exact.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    assert KLDRO(lam, 1.0).loss(L).item() == pytest.approx(exact.item(), rel=1e-6)


def test_kl_survives_huge_losses():
    p = KLDRO(0.01, 0.9).weights(torch.tensor([500.0, 10.0]))
    assert torch.isfinite(p).all()


def test_group_dro_exponentiated_gradient_update():
    eta = 0.5
    dro = GroupDRO(eta)
    dro.add_classes([3, 5, 9])
    q = {3: 1 / 3, 5: 1 / 3, 9: 1 / 3}
    for classes, losses in [([3, 9], [1.0, 2.0]), ([5, 9], [0.5, 4.0])]:
        dro.update(torch.tensor(classes), torch.tensor(losses))
        for c, l in zip(classes, losses):
            q[c] *= math.exp(eta * l)
        total = sum(q.values())
        q = {c: v / total for c, v in q.items()}
        assert dro.weights() == pytest.approx(q)
    # the loss weighs the batch's classes by q, renormalised over them
    loss = dro.loss(torch.tensor([3, 5]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx(1.0)


def test_per_class_mean():
    classes, means = per_class_mean(torch.tensor([1.0, 3.0, 5.0, 7.0]), torch.tensor([4, 2, 4, 4]))
    assert classes.tolist() == [2, 4] and means.tolist() == [3.0, pytest.approx(13 / 3)]


# --- GCL ----------------------------------------------------------------------

def exact_global_loss(img, labels, txt, seen, scale):
    logits = scale * img @ txt.t()
    image_loss = F.cross_entropy(logits, positions(seen, labels))
    terms = []
    for c in labels.unique().tolist():
        col = logits[:, (seen == c).nonzero()[0, 0]]
        pos, neg = col[labels == c], col[labels != c]
        terms.append(torch.log(torch.exp(neg[None, :] - pos[:, None]).mean()))
    return (image_loss + torch.stack(terms).mean()) / 2


def test_gcl_with_gamma_one_is_the_exact_global_loss_on_a_batch_with_every_class():
    torch.manual_seed(0)
    seen = torch.tensor([7, 1, 4])
    labels = torch.tensor([7, 1, 4, 4, 7, 1])  # every seen class is in the batch
    img0, txt0 = F.normalize(torch.randn(6, 5), dim=1), F.normalize(torch.randn(3, 5), dim=1)
    img_a, txt_a = img0.clone().requires_grad_(True), txt0.clone().requires_grad_(True)
    ours = GlobalContrastive(gamma=1.0).loss(img_a, labels, txt_a, seen, 4.0)
    ours.backward()
    img_b, txt_b = img0.clone().requires_grad_(True), txt0.clone().requires_grad_(True)
    exact = exact_global_loss(img_b, labels, txt_b, seen, 4.0)
    exact.backward()
    assert ours.item() == pytest.approx(exact.item(), rel=1e-5)
    assert torch.allclose(img_a.grad, img_b.grad, atol=1e-6) and torch.allclose(txt_a.grad, txt_b.grad, atol=1e-6)


def test_gcl_normalisers_move_with_gamma():
    gcl = GlobalContrastive(gamma=0.5)
    seen, labels = torch.tensor([0, 1]), torch.tensor([0, 1])
    txt = torch.eye(2)
    img1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    img2 = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=1)
    gcl.loss(img1, labels, txt, seen, 1.0)
    u1 = math.exp(gcl.log_u[0].item())
    assert u1 == pytest.approx(math.exp(0 - 1))  # s(x1, c0) − s(x0, c0) = 0 − 1
    gcl.loss(img2, labels, txt, seen, 1.0)
    g2 = math.exp(0.0 - img2[0, 0].item())
    assert math.exp(gcl.log_u[0].item()) == pytest.approx(0.5 * u1 + 0.5 * g2)


# --- buffer -----------------------------------------------------------------

def toy_set(labels, start=0):
    labels = torch.as_tensor(labels)
    images = (torch.arange(start, start + len(labels)) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 1, 1).clone()
    return InMemoryImageSet(images, labels)


def test_herding_picks_what_a_hand_computation_picks():
    # class mean of these normalised features is (0.6, 0.8)-ish; the hand-computed order is 2, then 0, then 1
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    order = herding_order(feats, 3)
    mu = F.normalize(feats, dim=1).mean(0)
    # first pick: closest single feature to mu
    first = int((F.normalize(feats, dim=1) - mu).norm(dim=1).argmin())
    assert order[0] == first == 2
    # second pick: minimises |mu - (f2 + f_i)/2|
    second = min((i for i in range(4) if i != 2), key=lambda i: (mu - (F.normalize(feats, dim=1)[2] + F.normalize(feats, dim=1)[i]) / 2).norm())
    assert order[1] == second
    assert len(set(order)) == 3


def test_split_quota():
    assert split_quota(10, [5, 3, 8]) == {5: 4, 3: 3, 8: 3}
    assert split_quota(2, [1, 2, 3]) == {1: 1, 2: 1, 3: 0}


def test_buffer_bytes_are_the_stored_pixels_and_labels():
    buf = ReplayBuffer(BufferSpec(size=4), 100, seed=0)
    buf.update(toy_set([0, 0, 1, 1, 1]), [0, 1])
    assert buf.summary()["exemplars"] == 4 and buf.summary()["bytes"] == 4 * 3 + 4 * 8


def test_fraction_and_per_class_capacity():
    assert ReplayBuffer(BufferSpec(fraction=0.1), 250, 0).capacity(5) == 25
    assert ReplayBuffer(BufferSpec(per_class=3), 250, 0).capacity(5) == 15
    with pytest.raises(ValueError, match="exactly one of size, per_class, fraction"):
        BufferSpec(size=3, fraction=0.1)


def test_domain_incremental_memory_keeps_every_domain():
    buf = ReplayBuffer(BufferSpec(size=20), 200, seed=0)
    first, second = toy_set([0, 1] * 50, start=0), toy_set([0, 1] * 50, start=100)
    buf.update(first, [0, 1])
    buf.update(second, [0, 1])
    pixels = buf.data.images[:, 0, 0, 0].long()
    assert len(buf) == 20 and 5 <= int((pixels < 100).sum()) <= 15  # about half from each experience


experiences = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=30), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(experiences, st.integers(0, 25), st.sampled_from(["class_balanced", "reservoir"]), st.integers(0, 10**6))
def test_buffer_invariants(exps, size, policy, seed):
    def fill(s):
        buf = ReplayBuffer(BufferSpec(size=size, policy=policy), 100, seed=s)
        seen: list[int] = []
        offered: dict[int, int] = {}
        for labels in exps:
            seen += [c for c in dict.fromkeys(labels) if c not in seen]
            for c in labels:
                offered[c] = offered.get(c, 0) + 1
            buf.update(toy_set(labels), seen)
            assert len(buf) <= size  # never above capacity
            if policy == "class_balanced" and len(buf):
                counts = buf.class_counts()
                # balanced within one sample among classes that still have unused images
                full = [counts.get(c, 0) for c in seen if offered[c] > counts.get(c, 0)]
                if full:
                    assert max(counts.values()) - min(full) <= 1
        return buf

    a, b = fill(seed), fill(seed)
    if len(a):
        assert torch.equal(a.data.images, b.data.images) and torch.equal(a.data.labels, b.data.labels)  # same seed, same buffer
    else:
        assert len(b) == 0


def test_herding_buffer_uses_features_and_keeps_the_prefix_when_shrinking():
    calls = []

    def features(data):
        calls.append(len(data))
        return torch.stack([data.labels.float(), torch.arange(len(data)).float()], 1) + 1

    buf = ReplayBuffer(BufferSpec(size=4, policy="herding"), 100, seed=0)
    buf.update(toy_set([0] * 6), [0], features)
    first = buf.data.images[:, 0, 0, 0].tolist()
    buf.update(toy_set([1] * 6, start=50), [0, 1], features)
    assert buf.class_counts() == {0: 2, 1: 2} and calls == [6, 6]
    assert buf.data.images[:2, 0, 0, 0].tolist() == first[:2]


# --- NME ----------------------------------------------------------------------

def test_nme_predicts_the_nearest_prototype():
    from methods.icarl import ICaRL

    method = ICaRL.__new__(ICaRL)
    feats = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]]), dim=1)
    method.learner = SimpleNamespace(encode_images=lambda x: x, class_features=lambda classes: torch.zeros(len(classes), 2))
    method.prototypes = {4: torch.tensor([1.0, 0.0]), 9: torch.tensor([0.0, 1.0]), 2: F.normalize(torch.tensor([-1.0, -0.2]), dim=0)}
    scores = method.predict(feats, [4, 9, 2])
    assert scores.argmax(1).tolist() == [0, 1, 2]


def test_replay_batches_are_mixed_into_every_step(plugins):
    from clbench.testing import run_method

    r = run_method(plugins.methods.get("er"), {"buffer": {"size": 6}, "replay_ratio": 0.5}, plugins=plugins)
    # 3 experiences of 24 images, batch 32 -> 1 step each; steps after the first add 16 replayed images
    assert r["cost"]["train_images"] == 3 * 24 + 2 * 16
    assert r["buffer"]["exemplars"] == 6 and r["buffer"]["bytes"] == 6 * 3 * 32 * 32 + 6 * 8

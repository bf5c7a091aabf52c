"""The replay buffer and replay methods against hand computations (DRO and GCL maths: test_dro.py, test_gcl.py)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from clbench.buffer import BufferSpec, ReplayBuffer, herding_order, split_quota
from clbench.data.base import InMemoryImageSet


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
    from clbench_methods.icarl import ICaRL

    method = ICaRL.__new__(ICaRL)
    feats = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]]), dim=1)
    method.learner = SimpleNamespace(encode_images=lambda x: x, class_features=lambda classes: torch.zeros(len(classes), 2))
    method.prototypes = {4: torch.tensor([1.0, 0.0]), 9: torch.tensor([0.0, 1.0]), 2: F.normalize(torch.tensor([-1.0, -0.2]), dim=0)}
    scores = method.predict(feats, [4, 9, 2])
    assert scores.argmax(1).tolist() == [0, 1, 2]


def test_replay_batches_are_mixed_into_every_step(plugins):
    from clbench.testing import run_method

    r = run_method(plugins.methods.get("er"), {"buffer": {"size": 20}, "replay_ratio": 0.5}, plugins=plugins)
    # 3 experiences of 24 images, batch 32 -> 1 step each; steps after the first add 16 replayed images
    assert r["cost"]["train_images"] == 3 * 24 + 2 * 16
    assert r["buffer"]["exemplars"] == 20 and r["buffer"]["bytes"] == 20 * 3 * 32 * 32 + 20 * 8
    # a memory of 6 caps the replay batch at 6 (no exemplar twice in a batch, as Mammoth's get_data)
    small = run_method(plugins.methods.get("er"), {"buffer": {"size": 6}, "replay_ratio": 0.5}, plugins=plugins)
    assert small["cost"]["train_images"] == 3 * 24 + 2 * 6

import pytest
import torch

from clbench.data.scenarios import build_stream, split_evenly
from clbench.data.synthetic import MAX_CLASSES, build_synthetic, class_name, class_parts
from clbench.errors import UserError


def small(**kw):
    opts = dict(num_classes=8, train_per_class=5, test_per_class=3, world_domains=["clean", "sketch"])
    opts.update(kw)
    return build_synthetic(**opts)


def test_world_is_rebuilt_identically_from_its_seed():
    a, b = small(), small()
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    c = small(world_seed=1)
    assert not torch.equal(a.train.images, c.train.images)


def test_splits_shapes_and_labels():
    d = small()
    assert d.train.images.shape == (8 * 5 * 2, 3, 32, 32) and d.train.images.dtype == torch.uint8
    assert torch.bincount(d.test.labels).tolist() == [3 * 2] * 8
    assert torch.bincount(d.train.domains).tolist() == [40, 40]
    assert not torch.equal(d.train.images[:5], d.test.images[:5])


def test_class_names_are_distinct_colour_shape_pairs():
    names = [class_name(k) for k in range(MAX_CLASSES)]
    assert len(set(names)) == MAX_CLASSES
    assert class_parts(0) == ("red", "circle") and names[1] == "green square"


def test_split_evenly():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]


def test_class_incremental_stream():
    d = small()
    s = build_stream(d, "class_incremental", seed=3, label="s", steps=3, holdout_classes=2)
    assert len(s.class_order) == 6 and sorted(s.class_order + s.control_classes) == list(range(8))
    assert [len(e.classes) for e in s.experiences] == [2, 2, 2]
    for e in s.experiences:
        assert set(e.train.labels.tolist()) == set(e.classes)
        assert len(e.test) == 2 * 3 * 2
    assert s.seen(1) == s.experiences[0].classes + s.experiences[1].classes
    assert s.eval_classes(0, 0) == s.experiences[0].classes
    assert s.eval_classes(0, 2) == s.experiences[0].classes + s.experiences[2].classes  # future: its own classes added
    assert set(s.control.labels.tolist()) == set(s.control_classes)
    # the class order depends on the seed and is reproducible
    again = build_stream(d, "class_incremental", seed=3, label="s", steps=3, holdout_classes=2)
    other = build_stream(d, "class_incremental", seed=4, label="s", steps=3, holdout_classes=2)
    assert again.class_order == s.class_order != other.class_order
    assert again.class_order_hash == s.class_order_hash


def test_control_set_named_by_class_ids_is_the_same_for_every_seed():
    d = small()
    for seed in (0, 1, 2):
        s = build_stream(d, "class_incremental", seed=seed, label="s", steps=3, holdout_classes=[6, 1])
        assert s.control_classes == [6, 1] and set(s.control.labels.tolist()) == {1, 6}
        assert sorted(s.class_order) == [0, 2, 3, 4, 5, 7]
        # the stream keeps the seeded order of the other classes
        assert s.class_order == [c for c in d.class_order(seed) if c not in (1, 6)]
    explicit = build_stream(d, "class_incremental", 0, "s", steps=2, class_order=[7, 6, 5, 4, 3, 2, 1, 0], holdout_classes=[0, 7])
    assert explicit.experiences[0].classes == [6, 5, 4] and explicit.control_classes == [0, 7]
    with pytest.raises(UserError, match=r"stream.holdout_classes: class 8 is not one of the dataset's 8 classes"):
        build_stream(d, "class_incremental", 0, "s", holdout_classes=[8])
    with pytest.raises(UserError, match="leave no class"):
        build_stream(d, "class_incremental", 0, "s", holdout_classes=list(range(8)))


def test_explicit_class_order_and_named_orders():
    d = small()
    s = build_stream(d, "class_incremental", 0, "s", steps=2, class_order=[7, 6, 5, 4, 3, 2, 1, 0])
    assert s.experiences[0].classes == [7, 6, 5, 4]
    d.named_orders["mine"] = [1, 0, 2, 3, 4, 5, 6, 7]
    assert build_stream(d, "class_incremental", 1993, "s", steps=2, class_order="mine").class_order[:2] == [1, 0]
    assert build_stream(d, "class_incremental", 1993, "s", steps=2).class_order == d.class_order(1993)  # seeded for every seed
    with pytest.raises(UserError, match="permutation"):
        build_stream(d, "class_incremental", 0, "s", steps=2, class_order=[0, 0, 1, 2, 3, 4, 5, 6])


def test_domain_incremental_stream():
    d = small()
    s = build_stream(d, "domain_incremental", 0, "s", domains=["sketch", "clean"])
    assert [e.domain for e in s.experiences] == ["sketch", "clean"]
    assert s.seen(0) == s.class_order and s.eval_classes(0, 1) == s.class_order
    assert torch.equal(s.experiences[0].test.domains.unique(), torch.tensor([1]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scenario="class_incremental", steps=9), "steps: 9 steps but the stream has only 8 classes"),
        (dict(scenario="domain_incremental", steps=3), r"one step per domain \(2\)"),
        (dict(scenario="class_incremental", domains=["noisy"]), "unknown domain 'noisy'"),
        (dict(scenario="class_incremental", holdout_classes=8), "leaves no class"),
        (dict(scenario="sideways"), "unknown scenario"),
    ],
)
def test_stream_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_stream(small(), seed=0, label="s", **kwargs)

"""Representation drift and effective negatives: every number computed by hand on tiny inputs."""
import math

import pytest
import torch

from clbench import note_class_mass, note_contrast
from clbench.contrast_stats import ContrastStats
from clbench.drift import DriftTracker, mean_cosine
from clbench.losses import contrastive_loss, cross_entropy_loss
from clbench.metrics import compute_metrics, drift

R = 1 / math.sqrt(2)


def test_mean_cosine_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # rows need not be unit length
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    assert mean_cosine(a, b) == pytest.approx((1 + R) / 2)
    with pytest.raises(ValueError, match="one shape"):
        mean_cosine(a, b[:1])


# one test image per experience, D = 2; FEATURES[t][j] is experience j's feature after step t, "init" before step 0
INIT = [[1.0, 0.0]] * 3
FEATURES = [
    [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
    [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]],  # experience 0's feature turned by 90°
    [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]],  # ... and back to 45°; experience 2 learned at 90° from the initial model
]


def _close(matrix, expected) -> bool:
    return all(a == b if b is None else a == pytest.approx(b, abs=1e-6) for row, want in zip(matrix, expected, strict=True)
               for a, b in zip(row, want, strict=True))


def _features(rows):
    return lambda j: torch.tensor([rows[j]])


def test_drift_matrices_by_hand_and_across_a_resume():
    tracker = DriftTracker(3)
    tracker.start(_features(INIT))
    for t in range(2):
        tracker.step(t, _features(FEATURES[t]))
    resumed = DriftTracker(3)
    resumed.load_state_dict(tracker.state_dict(), "cpu")  # what a checkpoint holds
    for tr in (tracker, resumed):
        tr.step(2, _features(FEATURES[2]))
        rec = tr.record()
        assert _close(rec["since_learned"], [[1, None, None], [0, 1, None], [R, 1, 1]])
        assert _close(rec["since_initial"], [[1, None, None], [0, 1, None], [R, 1, 0]])
    # drift: mean over j < T of 1 − S[T][j] = ((1 − 1/√2) + 0) / 2
    assert drift(rec["since_learned"]) == pytest.approx((1 - R) / 2)
    A = [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, 1.0, 1.0]]
    assert compute_metrics(A, [1, 1, 1], drift_matrix=rec["since_learned"])["drift"] == pytest.approx((1 - R) / 2)
    assert compute_metrics(A, [1, 1, 1])["drift"] is None
    assert drift([[1.0]]) is None  # one step: nothing old


def test_a_resume_without_references_leaves_drift_null():
    tracker = DriftTracker(2)
    tracker.load_state_dict(None, "cpu")  # a checkpoint written before drift was kept
    tracker.step(1, _features(FEATURES[1]))
    assert tracker.record() is None


def _stats(old):
    stats = ContrastStats(num_classes=6, device="cpu")
    stats.begin_experience(old)
    return stats


def test_effective_negatives_and_old_class_mass_by_hand():
    stats = _stats(old=[0, 5])  # class 5 is old but never in a batch or label space
    with stats.step():  # symmetric contrastive loss over the batch's classes, B = 4, C = 3
        note_contrast(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2]), symmetric=True)
    with stats.step():  # ce over the seen classes 0..3, B = 4
        note_contrast(torch.tensor([1, 1, 2, 3]), torch.tensor([0, 1, 2, 3]))
    summary = stats.end_experience(3)
    # step 1: negatives B − n_c = 2, 3, 3; anchor mass (n_c/B + 1/C)/2 = 5/12, 7/24, 7/24 -> old share 5/12
    # step 2: negatives 4, 2, 3, 3; mass n_c/B = 0, 1/2, 1/4, 1/4 -> old share 0
    assert summary["steps"] == 2
    assert summary["old_class_mass"] == pytest.approx((5 / 12 + 0) / 2, abs=1e-6)
    by_class = summary["classes"]
    assert {c: v["negatives"] for c, v in by_class.items()} == {"0": 3.0, "1": 2.5, "2": 3.0, "3": 1.5}
    assert {c: v["images"] for c, v in by_class.items()} == {"0": 1.0, "1": 1.5, "2": 1.0, "3": 0.5}
    assert {c: v["steps_scored"] for c, v in by_class.items()} == {"0": 2, "1": 2, "2": 2, "3": 1}
    assert summary["negatives_old"] == pytest.approx((3.0 + 0.0) / 2)  # class 5 saw no negatives
    assert summary["negatives_new"] == pytest.approx((2.5 + 3.0 + 1.5) / 3, abs=1e-4)  # rounded to 4 places
    assert stats.record() == [summary]


def test_a_method_mass_replaces_the_loss_mass():
    stats = _stats(old=[0])
    with stats.step():
        note_contrast(torch.tensor([0, 1]), torch.tensor([0, 1]), symmetric=True)
        note_class_mass(torch.tensor([0, 1]), torch.tensor([3.0, 1.0]))  # e.g. DRO weights
    assert stats.end_experience(1)["old_class_mass"] == pytest.approx(0.75)


def test_no_notes_outside_a_step_and_no_old_classes_means_null():
    stats = _stats(old=[])
    note_contrast(torch.tensor([0]), torch.tensor([0, 1]))  # outside a step: ignored
    assert stats.end_experience(0) is None and stats.record() is None
    stats.begin_experience([])
    with stats.step():
        note_contrast(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert stats.end_experience(1)["old_class_mass"] is None  # nothing old (first step, or domain-incremental)


@pytest.mark.parametrize("fn, symmetric", [(contrastive_loss, True), (cross_entropy_loss, False)])
def test_the_shared_losses_note_their_contrast(fn, symmetric):
    labels, classes = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2])
    features = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    text = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    stats, by_hand = _stats(old=[0]), _stats(old=[0])
    with stats.step():
        fn(features, labels, text, classes, torch.tensor(10.0))
    with by_hand.step():
        note_contrast(labels, classes, symmetric=symmetric)
    assert stats.end_experience(1) == by_hand.end_experience(1)


def test_a_step_that_calls_the_loss_twice_counts_its_largest_call():
    stats = _stats(old=[0])
    with stats.step():  # CutMix: one batch of B = 4 scored against two label sets
        note_contrast(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2]), symmetric=True)
        note_contrast(torch.tensor([1, 1, 1, 2]), torch.tensor([1, 2]), symmetric=True)
    by_class = stats.end_experience(1)["classes"]
    # class 1: negatives max(2, 1) = 2, images max(2, 3) = 3; class 0 only in the first call: 3 negatives, 1 image
    assert {c: (v["negatives"], v["images"], v["steps_scored"]) for c, v in by_class.items()} == {
        "0": (3.0, 1.0, 1), "1": (2.0, 3.0, 1), "2": (3.0, 1.0, 1)}


def test_class_ids_outside_the_dataset_are_not_counted():
    stats = _stats(old=[0])  # 6 classes
    with stats.step():
        note_contrast(torch.tensor([0, 7]), torch.tensor([0, 7]), symmetric=True)  # 7: another dataset's class
        note_class_mass(torch.tensor([0, 7]), torch.tensor([1.0, 5.0]))
    summary = stats.end_experience(1)
    assert set(summary["classes"]) == {"0"} and summary["classes"]["0"]["negatives"] == 1.0
    assert summary["old_class_mass"] == pytest.approx(1.0)  # the unknown class's mass is dropped too


def test_resuming_without_statistics_leaves_contrast_null():
    stats = _stats(old=[])
    stats.load_state_dict(None)  # a checkpoint written before these statistics were kept
    stats.begin_experience([0])
    with stats.step():
        note_contrast(torch.tensor([0, 1]), torch.tensor([0, 1]))
    stats.end_experience(1)
    assert stats.record() is None  # never a list missing its first experiences


def test_a_frozen_tower_checkpoint_keeps_no_features_and_resumes_equal():
    tracker = DriftTracker(3)
    tracker.start(_features(INIT))
    tracker.step(0, _features(INIT))
    state = tracker.state_dict(keep_features=False)  # the tower is as built: every reference is the current feature
    assert state["initial"] is None and state["learned"] is None
    resumed = DriftTracker(3)
    resumed.load_state_dict(state, "cpu", _features(INIT))
    for tr in (tracker, resumed):
        tr.step(1, _features(FEATURES[1]))
    assert resumed.record() == tracker.record()
    with pytest.raises(ValueError, match="features_of"):
        DriftTracker(3).load_state_dict(state, "cpu")

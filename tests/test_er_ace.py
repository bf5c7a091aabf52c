"""ER-ACE (methods/er_ace.py): the asymmetric cross-entropy against hand computations, its parameters, a run."""
import math
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from clbench import Batch
from clbench.testing import run_method
from clbench_methods.er_ace import ERACE, ERACEParams, ace_loss


def fake_learner():
    """Scores are the features themselves: text features are one-hot rows, logit scale 1."""
    seen = [[0, 1], [0, 1, 2, 3]]  # experience 0 teaches classes 0, 1; experience 1 classes 2, 3
    return SimpleNamespace(
        stream=SimpleNamespace(seen=lambda t: seen[t]),
        class_features=lambda classes, template=0, grad=False: torch.eye(4)[classes],
        encode_images=lambda x: x, logit_scale=torch.tensor(1.0),
    )


def batch(rows, labels, t, n_replayed):
    labels = torch.tensor(labels)
    return Batch(torch.tensor(rows), labels, sorted(set(labels.tolist())), SimpleNamespace(index=t), n_replayed)


def test_new_rows_see_only_their_own_classes_and_replayed_rows_every_seen_class():
    # two new rows (classes 2, 3) and one replayed row (class 0), in experience 1
    b = batch([[5.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0], [1.0, 0.0, 0.0, 1.0]], [2, 3, 0], t=1, n_replayed=1)
    new = (math.log(1 + math.exp(-1))  # row 1 over classes (2, 3): scores (1, 0); its 5 on class 0 is masked
           + math.log(1 + math.exp(-2))) / 2  # row 2 over (2, 3): scores (0, 2), label 3
    replayed = math.log(2 * math.e + 2) - 1  # row 3 over all four seen classes: scores (1, 0, 0, 1), label 0
    assert ace_loss(fake_learner(), b).item() == pytest.approx(new + replayed, rel=1e-6)


def test_the_replayed_rows_classes_are_not_unmasked_for_the_new_rows():
    # the replayed row's class 0 is in the batch, yet the new row's large class-0 score stays masked
    b = batch([[9.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]], [2, 3, 0], t=1, n_replayed=1)
    without_replay = batch([[9.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]], [2, 3], t=1, n_replayed=0)
    replayed = math.log(math.e + 3) - 1
    assert ace_loss(fake_learner(), b).item() == pytest.approx(ace_loss(fake_learner(), without_replay).item() + replayed, rel=1e-6)
    assert ace_loss(fake_learner(), without_replay).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_nothing_is_masked_in_the_first_experience():
    # both new rows are class 0: masked to class 0 alone their loss would be 0; unmasked it is CE over (0, 1)
    b = batch([[1.0, 3.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], [0, 0], t=0, n_replayed=0)
    assert ace_loss(fake_learner(), b).item() == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)
    later = batch([[1.0, 3.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], [0, 0], t=1, n_replayed=0)
    assert ace_loss(fake_learner(), later).item() == pytest.approx(0.0, abs=1e-6)


def test_params_default_to_mammoths_reservoir_and_cross_entropy():
    p = ERACEParams()
    assert p.buffer.fraction == 0.01 and p.buffer.policy == "reservoir" and p.replay_ratio == 1.0 and p.loss == "ce"
    assert ERACEParams(buffer={"size": 5}).buffer.policy == "reservoir"
    assert ERACEParams(buffer={"size": 5, "policy": "class_balanced"}).buffer.policy == "class_balanced"
    with pytest.raises(ValidationError):
        ERACEParams(loss="contrastive")
    assert ERACE.scenarios == ("class_incremental", "dataset_incremental")  # new classes in every experience


def test_er_ace_runs(plugins):
    record = run_method(ERACE, {"buffer": {"size": 10}}, plugins=plugins, train={"batch_size": 8})
    assert record["status"] == "done", record.get("error")
    assert record["buffer"]["exemplars"] == 10 and record["buffer"]["policy"] == "reservoir"
    assert record["memory"]["bytes"]["replay_images"] == record["buffer"]["bytes"] > 0
    assert "present among the new rows" in record["method_state"]["formula"]

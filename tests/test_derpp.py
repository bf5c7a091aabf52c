"""DER++ (methods/derpp.py) against hand computations, its reservoir, a run and a resumed run."""
import math
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from clbench import Batch
from clbench.data.base import InMemoryImageSet
from clbench.plugins import Plugins, make_plugin_manager
from clbench.runner import run_cell
from clbench.suite import load_suite
from clbench.testing import run_method, tiny_suite, write_suite
from clbench_methods.derpp import DERpp, DERppParams, ScoreMemory, derpp_loss

from .test_reliability import Interrupt


def register(plugins):
    if DERpp.name not in plugins.methods:
        plugins.methods.register(DERpp.name, DERpp, "test")
    return plugins


def test_derpp_loss_by_hand():
    # rows: one new image, two matched against stored scores, one replayed for its label
    scores = torch.tensor([[2.0, 0.0], [1.0, 3.0], [2.0, 2.0], [0.0, 1.0]])
    target = torch.tensor([0, 0, 0, 1])
    stored = torch.tensor([[0.0, 3.0, 7.0], [1.0, 99.0, 7.0]])  # row 2 stored one column: 99 and 7 are never read
    cols = torch.tensor([2, 1])
    value = derpp_loss(scores, target, 1, 2, stored, cols, alpha=0.3, beta=0.5)
    ce_new = math.log(1 + math.exp(-2))  # -log softmax([2, 0])_0
    mse = ((1 - 0) ** 2 + (3 - 3) ** 2 + (2 - 1) ** 2) / 3  # three stored (row, column) pairs
    ce_replayed = math.log(1 + math.exp(-1))  # -log softmax([0, 1])_1
    assert value.item() == pytest.approx(ce_new + 0.3 * mse + 0.5 * ce_replayed, rel=1e-6)
    assert derpp_loss(scores[:1], target[:1], 1, 0, None, None, 0.3, 0.5).item() == pytest.approx(ce_new, rel=1e-6)


def fake_learner(capacity_images):
    """Two experiences (classes 0, 1 then 2); features are the pixels times ``factor``; scores = features[:, seen]."""
    images = torch.tensor(capacity_images, dtype=torch.uint8).view(-1, 3, 1, 1)
    train = InMemoryImageSet(images, torch.tensor([0, 1, 2]))
    seen = [[0, 1], [0, 1, 2]]
    learner = SimpleNamespace(
        seed=0, device=torch.device("cpu"), factor=1.0, dataset=SimpleNamespace(train=train),
        stream=SimpleNamespace(experiences=[SimpleNamespace(train=train.subset(torch.tensor([0, 1]))),
                                            SimpleNamespace(train=train.subset(torch.tensor([2])))],
                               seen=lambda t: seen[t]),
        class_features=lambda classes, template=0, grad=False: torch.eye(3)[classes],
        logit_scale=torch.tensor(1.0),
    )
    learner.encode_images = lambda x: learner.factor * x.float().flatten(1)
    return learner, train


def batch_of(train, ids, t, n_replayed=0):
    ids = torch.tensor(ids)
    return Batch(train.load(ids).float(), train.labels[ids], sorted(set(train.labels[ids].tolist())),
                 SimpleNamespace(index=t), n_replayed, ids)


def test_scores_are_stored_by_the_step_that_computed_them_and_replayed_against_the_current_model():
    learner, train = fake_learner([[1, 2, 3], [0, 1, 1], [0, 0, 4]])
    method = DERpp(DERppParams(buffer={"size": 2}), learner)
    # experience 0, first step: nothing to replay; scores over classes (0, 1) are id0 (1, 2), id1 (0, 1)
    first = method.loss(batch_of(train, [0, 1], t=0))
    assert first.item() == pytest.approx((math.log(1 + math.e) + math.log(1 + math.exp(-1))) / 2, rel=1e-6)
    memory = method.memory
    assert memory.offered == 2 and memory.ids.tolist() == [0, 1] and memory.cols.tolist() == [2, 2]
    assert memory.scores[:, :2].tolist() == [[1.0, 2.0], [0.0, 1.0]]
    # experience 1: the model doubled its features; one minibatch for the scores, one for the labels
    learner.factor = 2.0
    memory.sample(1)
    a, b = (int(memory.ids[s[0]]) for s in memory.last)
    step = method.loss(batch_of(train, [2, a, b], t=1, n_replayed=2))
    ce_new = math.log(2 + math.exp(8)) - 8  # id2: scores (0, 0, 8), label 2
    mse = {0: ((2 - 1) ** 2 + (4 - 2) ** 2) / 2, 1: ((0 - 0) ** 2 + (2 - 1) ** 2) / 2}  # over the 2 stored columns
    ce_old = {0: math.log(math.exp(2) + math.exp(4) + math.exp(6)) - 2, 1: math.log(1 + 2 * math.exp(2)) - 2}
    assert step.item() == pytest.approx(ce_new + 0.3 * mse[a] + 0.5 * ce_old[b], rel=1e-6)
    assert memory.offered == 3 and len(memory) == 2
    if 2 in memory.ids.tolist():  # id2 replaced a slot with probability 2/3, storing all three columns
        slot = memory.ids.tolist().index(2)
        assert memory.cols[slot] == 3 and memory.scores[slot].tolist() == [0.0, 0.0, 8.0]


def test_reservoir_fills_in_order_then_keeps_each_offered_image_with_probability_k_over_n():
    images = InMemoryImageSet(torch.zeros(20, 3, 1, 1, dtype=torch.uint8), torch.zeros(20, dtype=torch.long))
    memory = ScoreMemory(5, 1, images, seed=0, device=torch.device("cpu"))
    memory.add(torch.arange(3), torch.zeros(3, 1))
    assert memory.ids.tolist() == [0, 1, 2, -1, -1] and len(memory) == 3
    kept = torch.zeros(20)
    for seed in range(400):
        memory = ScoreMemory(5, 1, images, seed=seed, device=torch.device("cpu"))
        for start in range(0, 20, 4):  # five steps of four images
            memory.add(torch.arange(start, start + 4), torch.zeros(4, 1))
        assert len(memory) == 5 and len(set(memory.ids.tolist())) == 5
        kept[memory.ids] += 1
    assert ((kept / 400 - 0.25).abs() < 0.08).all()  # K / N = 5 / 20 for every image, first or last


def test_sample_draws_two_independent_minibatches_without_replacement():
    images = InMemoryImageSet(torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 1, 1).clone(), torch.arange(6))
    memory = ScoreMemory(4, 2, images, seed=0, device=torch.device("cpu"))
    memory.add(torch.tensor([5, 3, 1]), torch.zeros(3, 2))
    x, y, ids = memory.sample(5)  # capped at the memory's 3 exemplars, each draw
    first, second = memory.last
    assert len(first) == len(second) == 3 and sorted(first.tolist()) == sorted(second.tolist()) == [0, 1, 2]
    assert y.tolist() == ids.tolist() and x[:, 0, 0, 0].tolist() == ids.tolist()


def test_params_default_to_mammoths_and_refuse_another_memory():
    p = DERppParams()
    assert (p.alpha, p.beta, p.replay_ratio, p.loss) == (0.3, 0.5, 1.0, "ce")
    assert p.buffer.fraction == 0.01 and p.buffer.policy == "reservoir"
    assert DERppParams(buffer={"size": 7}).buffer.policy == "reservoir"  # a suite's buffer without a policy
    with pytest.raises(ValidationError, match="reservoir"):
        DERppParams(buffer={"size": 7, "policy": "class_balanced"})
    with pytest.raises(ValidationError, match="one fixed capacity"):
        DERppParams(buffer={"per_class": 2})
    with pytest.raises(ValidationError):
        DERppParams(loss="contrastive")


def test_derpp_runs_and_reports_its_memory(plugins):
    record = run_method(DERpp, {"buffer": {"size": 10}}, plugins=register(plugins), train={"batch_size": 8})
    assert record["status"] == "done", record.get("error")
    assert record["buffer"]["exemplars"] == 10 and record["buffer"]["offered"] == 72  # 3 experiences of 24, one epoch
    kinds = record["memory"]["bytes"]
    assert kinds["stored_outputs"] == 10 * 6 * 4  # a float32 row over the stream's 6 classes per exemplar
    assert kinds["replay_images"] == record["buffer"]["bytes"] > 0
    assert record["method_state"]["alpha"] == 0.3 and "mse" in record["method_state"]["formula"]


def test_a_cell_interrupted_after_experience_1_and_rerun_gives_the_same_record(tmp_path, plugins):
    suite = tiny_suite([{"name": "derpp", "buffer": {"size": 10}}])
    suite["train"].update(batch_size=8, epochs=2)  # several steps per experience, images offered twice
    cell = load_suite(write_suite(tmp_path / "s.yaml", suite), register(plugins)).cells[0]
    uninterrupted = run_cell(cell, plugins, checkpoints=tmp_path / "a")
    interrupted = register(Plugins(make_plugin_manager()))
    interrupted.pm.register(Interrupt(2))  # the checkpoint after experience 1 exists, the one after 2 not
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, interrupted, checkpoints=tmp_path / "b")
    resumed = run_cell(cell, plugins, checkpoints=tmp_path / "b")
    assert uninterrupted["status"] == "done" and resumed["cost"]["resumed_at_experience"] == 2
    volatile = ("cost", "manifest")
    assert {k: v for k, v in resumed.items() if k not in volatile} == {k: v for k, v in uninterrupted.items() if k not in volatile}

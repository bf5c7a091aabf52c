"""GDumb (methods/gdumb.py): the greedy memory on hand-written streams, CutMix, the reset-and-refit, a run."""
import io
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from clbench import Batch
from clbench.data.base import InMemoryImageSet
from clbench.losses import cross_entropy_loss
from clbench.plugins import Plugins, make_plugin_manager
from clbench.runner import run_cell
from clbench.suite import load_suite
from clbench.testing import run_method, tiny_suite, write_suite
from clbench_methods.gdumb import GDumb, GDumbParams, GreedyMemory, cutmix, cutmix_box

from .test_reliability import Interrupt

A, B, C = 10, 20, 30  # class ids
STREAM = [(0, A), (1, A), (2, A), (3, A), (4, B), (5, B), (6, C), (7, C), (8, A)]


def offer(memory, stream, choose):
    memory.offer([i for i, _ in stream], [y for _, y in stream], choose)
    return memory.members


def test_greedy_memory_by_hand_evicting_the_oldest():
    # K = 4. ids 0-3 fill the memory with A. id 4 (B, new class) evicts A's first (id 0); id 5: k_c = 4 // 2 = 2 and
    # B holds 1, so A (3, the largest) loses id 1; id 6 (C, new): A and B tie at 2, A entered first and loses id 2;
    # id 7: k_c = 4 // 3 = 1 and C holds 1, skipped; id 8: A holds 1 = k_c, skipped.
    members = offer(GreedyMemory(4, seed=0), STREAM, choose=lambda n: 0)
    assert members == {A: [3], B: [4, 5], C: [6]}


def test_greedy_memory_by_hand_evicting_the_newest():
    members = offer(GreedyMemory(4, seed=0), STREAM, choose=lambda n: n - 1)
    assert members == {A: [0], B: [4, 5], C: [6]}


def test_greedy_memory_fills_before_it_balances_and_never_exceeds_its_capacity():
    memory = GreedyMemory(5, seed=0)
    assert offer(memory, [(0, A), (1, A), (2, B)], choose=lambda n: 0) == {A: [0, 1], B: [2]}
    # B: k_c = 5 // 2 = 2, so id 3 joins and 4-8 are skipped; C's first image fills the memory, then k_c = 1
    offer(memory, [(i, B) for i in range(3, 9)] + [(i, C) for i in range(9, 14)], choose=lambda n: 0)
    assert memory.members == {A: [0, 1], B: [2, 3], C: [9]} and len(memory) == 5
    # the random default: the counts of the hand-written stream for any seed; which A survives is drawn
    survivors = set()
    for seed in range(20):
        m = GreedyMemory(4, seed=seed)
        m.offer([i for i, _ in STREAM], [y for _, y in STREAM])
        assert m.counts() == {A: 1, B: 2, C: 1} and m.members[B] == [4, 5] and m.members[C] == [6]
        survivors |= set(m.members[A])
    assert len(survivors) > 1 and survivors <= {0, 1, 2, 3}


def test_memory_state_survives_a_weights_only_checkpoint():
    memory = GreedyMemory(4, seed=3)
    memory.offer(list(range(9)), [y for _, y in STREAM])
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    restored = GreedyMemory(4, seed=0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.members == memory.members and len(restored) == len(memory)
    assert torch.equal(restored.generator.get_state(), memory.generator.get_state())


def test_cutmix_box_by_hand():
    # lam 0.75: the box side is sqrt(0.25) = 0.5 of 8 = 4; centred at (1, 6) and clipped to the image
    assert cutmix_box((2, 3, 8, 8), 0.75, 1, 6) == (0, 4, 3, 8)
    assert cutmix_box((2, 3, 8, 8), 1.0, 4, 4) == (4, 4, 4, 4)  # lam 1: an empty box


def test_cutmix_pastes_the_permuted_images_in_the_box_and_lam_is_the_kept_area():
    images = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8)
    mixed, perm, lam = cutmix(images, 1.0, torch.Generator().manual_seed(0))
    inside = (mixed != images).any(0).any(0)  # (8, 8): pixels taken from another image
    area = int(inside.sum())
    assert lam == pytest.approx(1 - area / 64)
    rows, cols = inside.nonzero(as_tuple=True)
    if area:
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert torch.equal(mixed[:, :, box[0], box[1]], images[perm][:, :, box[0], box[1]])


def fake_learner(n_per_class=4):
    labels = torch.tensor([0] * n_per_class + [1] * n_per_class)
    images = torch.randint(0, 256, (len(labels), 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    train = InMemoryImageSet(images, labels)
    weights = {"w": torch.zeros(2), "b": torch.ones(1)}
    calls = []
    text = F.normalize(torch.randn(2, 48, generator=torch.Generator().manual_seed(1)), dim=1)
    learner = SimpleNamespace(
        seed=0, device=torch.device("cpu"), dataset=SimpleNamespace(train=train),
        stream=SimpleNamespace(experiences=[SimpleNamespace(index=0, train=train, classes=[0, 1])], seen=lambda t: [0, 1]),
        weights=lambda: weights, weights_changed=lambda: calls.append("weights_changed"),
        fit=lambda exp, loss_fn, data=None, epochs=None: calls.append(("fit", weights["w"].clone(), data, epochs)),
        class_features=lambda classes, template=0, grad=False: text[classes],
        encode_images=lambda x: F.normalize(x.flatten(1), dim=1), logit_scale=torch.tensor(10.0),
    )
    return learner, weights, calls


def test_after_each_experience_the_model_is_reset_to_pretrained_and_fitted_on_the_memory_alone():
    learner, weights, calls = fake_learner()
    method = GDumb(GDumbParams(buffer={"size": 4}, epochs=3), learner)
    weights["w"] += 5.0  # what training on earlier experiences did
    exp = learner.stream.experiences[0]
    method.train(exp)
    assert calls[0] == "weights_changed"
    name, w_at_fit, data, epochs = calls[1]
    assert name == "fit" and torch.equal(w_at_fit, torch.zeros(2)) and epochs == 3
    assert sorted(data.ids.tolist()) == sorted(method.memory.ids()) and len(data) == 4
    assert method.memory.counts() == {0: 2, 1: 2}
    assert method.memory_summary() == {"replay_images": 4 * 3 * 4 * 4 + 4 * 8, "frozen_models": 3 * 4}


def test_the_loss_is_cutmixs_mixture_of_the_two_labelings():
    learner, _, _ = fake_learner()
    method = GDumb(GDumbParams(buffer={"size": 4}), learner)
    images = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 1, 0])
    batch = Batch(images, labels, [0, 1], SimpleNamespace(index=0))
    replay = torch.Generator()
    replay.set_state(method.cutmix_generator.get_state())
    value = method.loss(batch)
    mixed, perm, lam = cutmix(images, 1.0, replay)
    text, classes, scale = learner.class_features([0, 1]), torch.tensor([0, 1]), learner.logit_scale
    feats = learner.encode_images(mixed)
    expected = lam * cross_entropy_loss(feats, labels, text, classes, scale) + (1 - lam) * cross_entropy_loss(feats, labels[perm], text, classes, scale)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    off = GDumb(GDumbParams(buffer={"size": 4}, cutmix_alpha=0), learner)
    plain = cross_entropy_loss(learner.encode_images(images), labels, text, classes, scale)
    assert off.loss(batch).item() == pytest.approx(plain.item(), rel=1e-6)


def test_params_defaults_and_refusals():
    p = GDumbParams()
    assert (p.epochs, p.cutmix_alpha, p.cutmix_prob, p.loss, p.buffer.fraction) == (256, 1.0, 1.0, "ce", 0.01)
    for bad, match in [({"size": 4, "policy": "reservoir"}, "greedy"), ({"per_class": 2}, "one fixed capacity"),
                       ({"size": 0}, "above 0")]:
        with pytest.raises(ValidationError, match=match):
            GDumbParams(buffer=bad)
    assert GDumb.scenarios == ("class_incremental", "dataset_incremental")  # new classes in every experience


def test_gdumb_runs_with_a_balanced_memory(plugins):
    record = run_method(GDumb, {"buffer": {"size": 12}, "epochs": 2}, plugins=plugins, train={"batch_size": 8})
    assert record["status"] == "done", record.get("error")
    assert record["buffer"]["exemplars"] == 12 and record["buffer"]["policy"] == "gdumb_greedy"
    assert record["method_state"]["memory_classes"] == {str(c): 2 for c in record["class_order"]}  # 12 // 6 each
    kinds = record["memory"]["bytes"]
    assert kinds["replay_images"] == record["buffer"]["bytes"] > 0 and kinds["frozen_models"] > 0


def test_a_resumed_cell_still_resets_to_the_pretrained_weights(tmp_path, plugins):
    # the method is built before a resumed cell restores its trained weights, so its pretrained copy stays the cell's
    # initial model; a copy of the trained weights would change the rows after the resume
    def register(p):
        if GDumb.name not in p.methods:
            p.methods.register(GDumb.name, GDumb, "test")
        return p

    suite = tiny_suite([{"name": "gdumb", "buffer": {"size": 12}, "epochs": 1}])
    suite["train"]["batch_size"] = 8
    cell = load_suite(write_suite(tmp_path / "s.yaml", suite), register(plugins)).cells[0]
    uninterrupted = run_cell(cell, plugins, checkpoints=tmp_path / "a")
    interrupted = register(Plugins(make_plugin_manager()))
    interrupted.pm.register(Interrupt(2))
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, interrupted, checkpoints=tmp_path / "b")
    resumed = run_cell(cell, plugins, checkpoints=tmp_path / "b")
    assert uninterrupted["status"] == "done" and resumed["cost"]["resumed_at_experience"] == 2
    volatile = ("cost", "manifest")
    assert {k: v for k, v in resumed.items() if k not in volatile} == {k: v for k, v in uninterrupted.items() if k not in volatile}

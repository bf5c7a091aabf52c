"""zscl: the distillation by hand, weight ensembling as a running mean, the reference set (check, build), runs and a resume."""
import math
from types import SimpleNamespace

import pytest
import torch

from clbench import Batch
from clbench.cli import main
from clbench.testing import TINY_STREAM, run_method, tiny_suite, write_suite
from clbench_methods.zscl import ZSCL, ZSCLParams, add_to_average, l2_penalty, zscl_distillation

#: a reference set that builds in a fraction of a second: the synthetic world's pretraining images of 6 classes
#: (38..43: the tiny CLIP was pretrained on 40..69, so 4 of them have pretraining images)
REFERENCE = {"dataset": "synthetic", "first_class": 38, "num_classes": 6, "train_per_class": 4, "test_per_class": 1,
             "train_split": "pretrain"}


def softmax(row):
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def kd_by_hand(student, teacher, T):
    """T² · mean over rows of −Σ_j softmax(teacher/T)_j log softmax(student/T)_j, and its gradient T·(q − p)/rows."""
    value, grad = 0.0, []
    for s, t in zip(student, teacher):
        p, q = softmax([v / T for v in t]), softmax([v / T for v in s])
        value += -sum(pj * math.log(qj) for pj, qj in zip(p, q))
        grad.append([T * (qj - pj) / len(student) for pj, qj in zip(p, q)])
    return T * T * value / len(student), grad


def transpose(m):
    return [list(col) for col in zip(*m)]


def test_distillation_value_and_gradient_on_3_images_by_4_texts_by_hand():
    student = [[1.0, -0.5, 2.0, 0.0], [0.3, 0.3, -1.0, 1.5], [-2.0, 0.5, 0.0, 1.0]]
    teacher = [[2.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, 1.0], [-1.0, -1.0, 3.0, 0.5]]
    T, wi, wt = 2.0, 1.0, 0.5
    image, g_image = kd_by_hand(student, teacher, T)  # each image's distribution over the 4 texts
    text, g_text = kd_by_hand(transpose(student), transpose(teacher), T)  # each text's distribution over the 3 images
    s = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    value = zscl_distillation(s, torch.tensor(teacher, dtype=torch.float64), T, wi, wt)
    value.backward()
    assert value.item() == pytest.approx(wi * image + wt * text, rel=1e-12)
    expected = wi * torch.tensor(g_image, dtype=torch.float64) + wt * torch.tensor(g_text, dtype=torch.float64).t()
    assert torch.allclose(s.grad, expected, atol=1e-12)
    # equal logits: the distribution is the teacher's, the gradient vanishes, the value is T² times the mean entropy
    same = torch.tensor(teacher, dtype=torch.float64, requires_grad=True)
    zscl_distillation(same, torch.tensor(teacher, dtype=torch.float64), T, 1.0, 0.0).backward()
    assert torch.allclose(same.grad, torch.zeros(3, 4, dtype=torch.float64), atol=1e-12)
    assert zscl_distillation(s, s.detach(), T, 0.0, 0.0).item() == 0.0


def test_l2_penalty_is_the_summed_squared_distance():
    w = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    anchor = {"a": torch.tensor([0.0, 4.0]), "b": torch.tensor([[1.5]])}
    assert l2_penalty(w, anchor).item() == pytest.approx(1 + 4 + 1)


def test_weight_ensembling_is_the_running_mean_of_what_it_averaged():
    start = {"w": torch.tensor([1.0, 2.0]), "v": torch.tensor([[0.0, -3.0]])}
    updates = [{"w": torch.tensor([3.0, 4.0]), "v": torch.tensor([[6.0, 3.0]])},
               {"w": torch.tensor([5.0, 0.0]), "v": torch.tensor([[-3.0, 0.0]])},
               {"w": torch.tensor([-1.0, 6.0]), "v": torch.tensor([[1.0, 12.0]])}]
    average, count = {k: v.clone() for k, v in start.items()}, 1
    for k, weights in enumerate(updates, start=1):
        count = add_to_average(average, weights, count)
        members = [start] + updates[:k]
        assert count == k + 1
        for name in start:
            assert torch.allclose(average[name], sum(m[name] for m in members) / (k + 1))
    assert torch.allclose(average["w"], torch.tensor([2.0, 3.0])) and torch.allclose(average["v"], torch.tensor([[1.0, 3.0]]))


class FakeLearner:
    """A 'CLIP' whose one trainable weight (2,) ``fit`` sets to i + 1 in step i, after ``loss_fn`` ran on the step's batch."""

    def __init__(self, steps):
        self.steps, self.seed, self.changed = steps, 0, 0
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.logit_scale = torch.tensor(1.0)

    def snapshot(self):
        return SimpleNamespace(nbytes=8)

    def trainable_parameters(self):
        return {"w": self.w}

    def weights_changed(self):
        self.changed += 1

    def encode_images(self, x):
        return x

    def class_features(self, classes, template=0, grad=False):
        return torch.eye(2)[list(classes)]

    def fit(self, exp, loss_fn):
        batch = Batch(torch.eye(2), torch.tensor([0, 1]), [0, 1], exp)
        for i in range(self.steps):
            assert torch.isfinite(loss_fn(batch))
            with torch.no_grad():
                self.w.fill_(i + 1)


@pytest.mark.parametrize("steps, freq, members", [(5, 2, [0, 1, 3, 5]), (6, 2, [0, 1, 3, 5, 6]), (3, 1, [0, 1, 2, 3]),
                                                  (4, 10, [0, 1, 4])])
def test_the_average_holds_the_start_every_we_freq_th_step_and_the_last(steps, freq, members):
    """The weights after steps 0, freq, 2·freq, … (the reference's ``iteration % avg_freq == 0``) and after the last
    step, with the experience's start weights (0 here); the model leaves the experience as their mean."""
    learner = FakeLearner(steps)
    params = ZSCLParams(reference={"dataset": "synthetic"}, image_loss_weight=0, text_loss_weight=0, l2_weight=0, we_freq=freq)
    method = ZSCL(params, learner)
    exp = SimpleNamespace(index=0, classes=[0, 1])
    method.before_experience(exp)
    method.train(exp)
    assert torch.allclose(learner.w, torch.full((2,), sum(members) / len(members)))
    assert method.averaged == [len(members)] and learner.changed == 1
    method.before_experience(SimpleNamespace(index=1, classes=[0, 1]))  # the next experience averages afresh from there
    assert method.count == 1 and torch.equal(method.average["w"], learner.w.detach())


def suite_with(tmp_path, reference, **params):
    entry = {"name": "zscl", "reference": reference, "we_freq": 1, **params}
    return write_suite(tmp_path / "s.yaml", tiny_suite([entry]))


def validate(capsys, path):
    with pytest.raises(SystemExit) as info:
        main(["validate", str(path)])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_validate_passes_with_a_pretraining_reference_and_refuses_bad_ones_with_one_line(tmp_path, capsys):
    code, out, err = validate(capsys, suite_with(tmp_path, REFERENCE))
    assert code == 0 and "1 cells" in out, err
    bad = [
        ({**REFERENCE, "dataset": "synthtic"}, "methods[0].reference.dataset: unknown dataset 'synthtic' (did you mean 'synthetic'?); known: "),
        ({**REFERENCE, "nm_classes": 3}, "methods[0].reference.nm_classes: unknown key (did you mean 'num_classes'?); known keys: "),
        ({**REFERENCE, "num_classes": 99}, "methods[0].reference.num_classes: Input should be less than or equal to 70 (got 99)"),
        ({**REFERENCE, "train_split": "val"}, "methods[0].reference.train_split: Input should be 'train' or 'pretrain' (got 'val')"),
        ({**REFERENCE, "first_class": 0}, "methods[0].reference: train_split 'pretrain' has no images of classes 0..5: the tiny CLIP "
                                          "was pretrained on classes 40..69 only"),
        ({"num_classes": 6}, "methods[0].reference: needs 'dataset': a registered dataset's name"),
        (None, "methods[0].reference: zscl distils on a reference dataset; name one as a stream names its dataset"),
    ]
    for reference, expected in bad:
        path = suite_with(tmp_path, reference)
        code, out, err = validate(capsys, path)
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: {expected}"), err


def test_validate_refuses_a_we_freq_that_would_skip_the_experience(tmp_path, capsys):
    stream = {**TINY_STREAM, "train_per_class": 40}  # 2 classes × 40 images / 32 per batch: 3 steps per experience
    path = write_suite(tmp_path / "s.yaml", tiny_suite([{"name": "zscl", "reference": REFERENCE}], streams=[stream]))
    code, _, err = validate(capsys, path)
    assert code == 2 and err.count("\n") == 1
    assert f"{path}: methods[0].we_freq: 100 but an experience of stream 'synthetic-ci3' has about 3 training steps" in err


def test_validate_with_zscl_imports_no_torch(tmp_path):
    from .test_cli import loaded_by

    assert loaded_by("validate", suite_with(tmp_path, REFERENCE)) == []


def test_zscl_runs_keeps_the_teacher_and_averages_every_experience(plugins):
    record = run_method(ZSCL, {"reference": REFERENCE, "we_freq": 1}, plugins=plugins, train={"epochs": 2})
    assert record["status"] == "done", record.get("traceback")
    state = record["method_state"]
    assert state["reference_texts"] == 6 and state["reference_pool"] == 4 * 4 * 3  # 4 of 6 classes pretrained, 3 domains
    assert state["weights_averaged"] == [3, 3, 3]  # start + the weights after each of the 2 steps
    assert state["temperature"] == 2.0 and state["l2_weight"] == 1.0 and state["label_smoothing"] == 0.2
    memory = record["memory"]["bytes"]
    assert memory["frozen_models"] > 0 and memory["parameter_anchors"] == memory["weight_average"] > 0
    assert ZSCLParams() == ZSCLParams(reference=None, reference_prompt="a photo of a {}.", temperature=2.0, image_loss_weight=1.0,
                                      text_loss_weight=1.0, l2_weight=1.0, we=True, we_freq=100, label_smoothing=0.2)


def test_a_prompt_without_one_slot_is_refused():
    with pytest.raises(ValueError, match="exactly one"):
        ZSCLParams(reference_prompt="a photo")


def test_resumed_zscl_cell_gives_the_same_record(tmp_path, plugins):
    from clbench.plugins import Plugins, make_plugin_manager
    from clbench.runner import run_cell

    from .test_reliability import Interrupt, cells_of, stable

    cell = cells_of(tmp_path, [{"name": "zscl", "reference": REFERENCE, "we_freq": 1, "reference_images": 16}], plugins)[0]
    uninterrupted = run_cell(cell, plugins, checkpoints=tmp_path / "a")
    interrupted = Plugins(make_plugin_manager())
    interrupted.pm.register(Interrupt(1))  # stops after experience 1 is reported: its checkpoint exists
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, interrupted, checkpoints=tmp_path / "b")
    resumed = run_cell(cell, plugins, checkpoints=tmp_path / "b")
    assert resumed["cost"]["resumed_at_experience"] == 2
    assert uninterrupted["status"] == "done" and uninterrupted["method_state"]["reference_pool"] == 16
    assert stable(resumed) == stable(uninterrupted)

"""lwf: PyCIL's distillation term by hand, the loss as finetune's objective plus it, a run and a resume."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clbench import Batch
from clbench_methods.lwf import LwF, LwFParams, distillation
from clbench_methods.objective import objective

LN3 = math.log(3)


def test_distillation_value_on_2x2_logits_by_hand():
    # teacher / T = [[ln 3, 0], [0, 0]] -> targets (3/4, 1/4), (1/2, 1/2)
    # student / T = [[0, ln 3], [ln 3, 0]] -> log softmax (ln 1/4, ln 3/4), (ln 3/4, ln 1/4)
    teacher = torch.tensor([[2 * LN3, 0.0], [0.0, 0.0]])
    student = torch.tensor([[0.0, 2 * LN3], [2 * LN3, 0.0]])
    row1 = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    row2 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    assert distillation(student, teacher, 2.0).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)
    assert distillation(student, teacher, 2.0, t_squared=True).item() == pytest.approx(4 * (row1 + row2) / 2, rel=1e-6)
    # at T = 1 the same logits give targets softmax([2 ln 3, 0]) = (9/10, 1/10) and log softmax (ln 1/10, ln 9/10)
    row1_t1 = -(0.9 * math.log(0.1) + 0.1 * math.log(0.9))
    row2_t1 = -(0.5 * math.log(0.9) + 0.5 * math.log(0.1))
    assert distillation(student, teacher, 1.0).item() == pytest.approx((row1_t1 + row2_t1) / 2, rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("t_squared", [False, True])
def test_distillation_gradient_is_softmax_difference_over_t_b(T, t_squared):
    torch.manual_seed(0)
    student = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5)
    distillation(student, teacher, T, t_squared).backward()
    closed = (F.softmax(student.detach() / T, 1) - F.softmax(teacher / T, 1)) / (T * 3)
    assert torch.allclose(student.grad, closed * (T * T if t_squared else 1.0), atol=1e-6)


def fake_lwf(loss="ce", **params):
    """An LwF on a fixed linear 'CLIP' (4-d images, 4 classes), previous model a different map, old classes (0, 1)."""
    torch.manual_seed(0)
    text = F.normalize(torch.randn(4, 4), dim=1)
    learner = SimpleNamespace(
        class_features=lambda classes, template=0, grad=False: text[torch.tensor(list(classes))],
        encode_images=lambda x: F.normalize(x, dim=1), logit_scale=torch.tensor(10.0),
        stream=SimpleNamespace(seen=lambda t: [0, 1, 2, 3][: 2 + 2 * t]),
    )
    method = LwF(LwFParams(loss=loss, **params), learner)
    method.previous = SimpleNamespace(encode_images=lambda x: F.normalize(x.flip(1), dim=1), logit_scale=torch.tensor(5.0))
    method.previous_text = text[:2].flip(0)
    method.old_classes = [0, 1]
    return method, learner, text


@pytest.mark.parametrize("loss", ["ce", "contrastive"])
def test_loss_is_finetunes_objective_plus_weighted_distillation_over_old_prompts(loss):
    method, learner, text = fake_lwf(loss, distill_weight=0.7, temperature=3.0)
    images, labels = torch.randn(5, 4), torch.tensor([2, 3, 3, 2, 3])
    batch = Batch(images, labels, [2, 3], SimpleNamespace(index=1))
    current = 10.0 * F.normalize(images, dim=1) @ text[:2].t()
    teacher = 5.0 * F.normalize(images.flip(1), dim=1) @ text[:2].flip(0).t()
    expected = objective(learner, batch, loss, 0) + 0.7 * distillation(current, teacher, 3.0)
    assert method.loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)
    method.previous = None  # the first experience: finetune's objective alone
    assert method.loss(batch).item() == pytest.approx(objective(learner, batch, loss, 0).item(), rel=1e-6)


def test_lwf_runs_distils_from_the_second_experience_and_records_its_formula(plugins):
    from clbench.testing import run_method

    record = run_method(LwF, {"distill_weight": 1.5}, plugins=plugins)
    assert record["status"] == "done", record.get("error")
    state = record["method_state"]
    assert state["distill_weight"] == 1.5 and state["temperature"] == 2.0 and state["loss"] == "ce"
    assert state["distill_t_squared"] is False and "_KD_loss" in state["formula"]
    assert record["memory"]["bytes"]["frozen_models"] > 0
    assert LwFParams() == LwFParams(loss="ce", template=0, distill_weight=3.0, temperature=2.0, distill_t_squared=False)


def test_resumed_lwf_cell_gives_the_same_record(tmp_path, plugins):
    from clbench.plugins import Plugins, make_plugin_manager
    from clbench.runner import run_cell

    from .test_reliability import Interrupt, cells_of, stable

    plugins.methods.register(LwF.name, LwF, "test")
    cell = cells_of(tmp_path, [{"name": "lwf", "loss": "contrastive"}], plugins)[0]
    uninterrupted = run_cell(cell, plugins, checkpoints=tmp_path / "a")
    interrupted = Plugins(make_plugin_manager())
    interrupted.methods.register(LwF.name, LwF, "test")
    interrupted.pm.register(Interrupt(2))  # stops in experience 2: the checkpoint after experience 1 exists
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, interrupted, checkpoints=tmp_path / "b")
    resumed = run_cell(cell, plugins, checkpoints=tmp_path / "b")
    assert resumed["cost"]["resumed_at_experience"] == 2
    assert uninterrupted["status"] == "done"
    assert stable(resumed) == stable(uninterrupted)

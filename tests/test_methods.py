"""Contract tests run on every registered method, so a new method is covered without anyone adding it here."""
import pytest
import torch

from clbench.metrics import METRICS
from clbench.plugins import Plugins, make_plugin_manager
from clbench.testing import run_method

REGISTERED = Plugins(make_plugin_manager()).methods.names()
#: what a method cannot run without (a parameter it has no default for), on the tiny stream
NEEDS = {"zscl": {"reference": {"dataset": "synthetic", "num_classes": 6, "train_per_class": 4, "test_per_class": 1}, "we_freq": 1},
         "coda_prompt": {"layers": [[0, 1]]}}  # its default blocks 0..4 are more than the tiny tower's 2


@pytest.mark.parametrize("name", REGISTERED)
def test_method_contract_on_a_tiny_stream(name, plugins):
    method_cls = plugins.methods.get(name)
    import sys

    assert method_cls.name == name
    assert method_cls.__doc__ or sys.modules[method_cls.__module__].__doc__  # `clbench list methods` shows it
    record = run_method(method_cls, NEEDS.get(name), plugins=plugins)
    assert record["status"] == "done", record.get("traceback")
    T = len(record["experiences"])
    assert len(record["acc_matrix"]) == T and all(len(row) == T for row in record["acc_matrix"])
    A = record["acc_matrix"]
    assert all(0 <= A[t][j] <= 1 for t in range(T) for j in range(T) if j <= t or method_cls.scores_unseen_classes)
    assert all(A[t][j] is None or 0 <= A[t][j] <= 1 for t in range(T) for j in range(T))
    assert set(record["metrics"]) == set(METRICS)
    assert record["cost"]["eval_images"] > 0 or record["cost"]["shared_reused"] > 0  # frozen towers: features shared


@pytest.mark.parametrize("name", REGISTERED)
def test_method_is_deterministic_under_its_seed(name, plugins):
    method_cls = plugins.methods.get(name)
    a, b = run_method(method_cls, NEEDS.get(name), plugins=plugins), run_method(method_cls, NEEDS.get(name), plugins=plugins)
    assert a["acc_matrix"] == b["acc_matrix"] and a["train_loss"] == b["train_loss"]


def test_zeroshot_is_constant_across_steps_on_domains(plugins):
    """With a fixed label space (domain-incremental) a never-trained model cannot forget."""
    stream = {"dataset": "synthetic", "scenario": "domain_incremental", "num_classes": 5, "train_per_class": 4,
              "test_per_class": 4, "world_domains": ["clean", "inverted"]}
    r = run_method(plugins.methods.get("zeroshot"), stream=stream, plugins=plugins)
    A = r["acc_matrix"]
    assert A[0] == A[1] == r["initial_acc"]
    assert r["metrics"]["forgetting"] == 0 and r["metrics"]["bwt"] == 0 and r["metrics"]["fwt"] == 0
    assert r["train_loss"] == [None, None]


@pytest.mark.parametrize("loss", ["contrastive", "ce"])
def test_finetune_learns_the_current_experience(plugins, loss):
    """After training on an experience the model fits it far better than chance, and the loss is finite."""
    stream = {"dataset": "synthetic", "scenario": "class_incremental", "steps": 2, "num_classes": 6,
              "train_per_class": 30, "test_per_class": 10, "world_domains": ["clean"]}
    r = run_method(plugins.methods.get("finetune"), {"loss": loss}, stream=stream, plugins=plugins, train={"epochs": 10})
    A = r["acc_matrix"]
    assert A[1][1] > 0.5  # 6 classes in the classifier: chance is 1/6
    assert all(torch.isfinite(torch.tensor(l)) for l in r["train_loss"])


def test_frozen_model_encodes_each_test_image_once(plugins, monkeypatch):
    """zeroshot over T steps costs one pass over the test sets (features reused while weights are unchanged)."""
    monkeypatch.setenv("CLBENCH_CACHE_DIR", "off")  # this cell's own work, nothing shared with other tests
    r = run_method(plugins.methods.get("zeroshot"), plugins=plugins)
    test_images = sum(e["test_size"] for e in r["experiences"])
    assert r["cost"]["eval_images"] == test_images
    f = run_method(plugins.methods.get("finetune"), plugins=plugins)
    assert f["cost"]["eval_images"] == test_images * (1 + len(f["experiences"]))  # re-encoded after each training step


def test_image_features_survive_training_of_the_text_tower_only(plugins, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE_DIR", "off")  # this cell's own work, nothing shared with other tests

    class TextOnly(plugins.methods.get("finetune")):
        name = "text_only_finetune"

        def before_experience(self, exp):
            for p in self.learner.model.visual.parameters():
                p.requires_grad_(False)

    r = run_method(TextOnly, plugins=plugins)
    assert r["status"] == "done"
    assert r["cost"]["eval_images"] == sum(e["test_size"] for e in r["experiences"])  # one pass: the image tower never changed

"""Cells with ``train.devices: 2``: torchrun starts 2 gloo ranks on this CPU (clbench/rank_group.py).

The equality test is the contract of docs/distributed.md: a cell run as 2 ranks gives the record of
the same cell in one process with the same global batch. Tolerance: every accuracy-matrix entry
equal, and each experience's mean training loss within a relative 3e-4. The ranks sum the same
numbers in another order, with other GEMM shapes and one CPU thread each; that alone moves the
losses: the same single-process cells run with 1 and with 2 threads differ by up to 1.1e-4
(dro_replay's third experience here, whose per-class weights amplify it; 3e-6 for finetune), and
the 2-rank run is within 1.5e-5 of the 1-thread one (measured with the tinyworld weights of the
demo rework; the first weights gave 2.4e-5 and a tolerance of 1e-4).
"""
from __future__ import annotations

import json

import pytest

from clbench.api import run_suite
from clbench.testing import tiny_suite, write_suite

pytestmark = pytest.mark.usefixtures("hub_offline_env")

#: the methods whose per-batch statistics the issue names: plain, replay, per-class DRO weights, herding + prototypes;
#: and MoE-Adapters, whose gating noise, expert usage and DDAS routing counts (gathered while scoring the ranks'
#: blocks of the test sets) must be the whole batch's and the whole test set's (its expert dropout, drawn per rank,
#: is off here: docs/distributed.md)
METHODS = ["finetune", "er", "dro_replay", "icarl", {"name": "moe_adapters", "dropout": 0.0}]
NAMES = [m if isinstance(m, str) else m["name"] for m in METHODS]
#: an uneven global batch (7 rows: 4 + 3; the last batch of an experience 3 rows: 2 + 1) and enough steps to move
TRAIN = {"batch_size": 7, "epochs": 2, "optimizer": "sgd", "lr": 0.001}
LOSS_RTOL = 3e-4  # above the 1.1e-4 that the thread count alone moves the losses (module docstring)


@pytest.fixture
def hub_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


#: the tiny CLIP pretrained on the synthetic world (shipped), so training moves accuracies away from chance
MODEL = {"arch": "clbench-tiny-32", "pretrained": "tinyworld"}
STREAM = {"dataset": "synthetic", "scenario": "class_incremental", "steps": 3, "num_classes": 12, "train_per_class": 8,
          "test_per_class": 10, "world_domains": ["clean", "sketch"]}


def _suite(tmp_path, name, methods, devices, **train):
    suite = tiny_suite(methods, name=name, streams=[dict(STREAM)])
    suite["model"] = dict(MODEL)
    suite["train"].update(TRAIN, devices=devices, **train)
    return write_suite(tmp_path / f"{name}.yaml", suite)


def _records(folder) -> dict:
    return {r["method"]: r for r in (json.loads(p.read_text()) for p in (folder / "records").glob("*.json"))}


def _same_record(one: dict, two: dict) -> None:
    assert two["status"] == "done", two.get("error")
    assert two["acc_matrix"] == one["acc_matrix"]
    assert two["initial_acc"] == one["initial_acc"]
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=LOSS_RTOL)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The reference records: each method's cell in one process."""
    tmp = tmp_path_factory.mktemp("one")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        run_suite(_suite(tmp, "one", METHODS, 1), tmp / "results", progress=False)
    return _records(tmp / "results")


def test_two_ranks_give_the_single_process_record(tmp_path, single_process):
    summary = run_suite(_suite(tmp_path, "two", METHODS, 2), tmp_path / "results", progress=False)
    assert summary.ok
    two = _records(tmp_path / "results")
    for method in NAMES:
        one = single_process[method]
        assert two[method]["cell_id"] == one["cell_id"]  # train.devices is where a cell runs, not what it is
        _same_record(one, two[method])
        assert two[method]["cost"]["devices"] == 2 and "devices" not in one["cost"]
        assert two[method]["cost"]["train_images"] == one["cost"]["train_images"]  # the global batch, counted once
        assert two[method]["buffer"] == one["buffer"]  # one memory, the same on every rank
    # the DRO class weights each step applied, from the global batch's per-class losses
    weights = [(h["weights"], h["steps"]) for h in two["dro_replay"]["method_state"]["class_weights"]]
    reference = [(h["weights"], h["steps"]) for h in single_process["dro_replay"]["method_state"]["class_weights"]]
    assert [s for _, s in weights] == [s for _, s in reference]
    for (w, _), (r, _) in zip(weights, reference):
        assert w.keys() == r.keys() and [w[c] for c in w] == pytest.approx([r[c] for c in w], rel=LOSS_RTOL)
    moe, moe_one = two["moe_adapters"]["method_state"], single_process["moe_adapters"]["method_state"]
    for key in ("expert_usage", "ddas_routing", "frozen_experts"):
        assert moe[key] == moe_one[key], key
    assert moe["thresholds"] == pytest.approx(moe_one["thresholds"], rel=LOSS_RTOL)
    assert not (tmp_path / "results" / "ranks").exists() or not any((tmp_path / "results" / "ranks").iterdir())


FLAKY = '''
import os
import signal

from clbench import hookimpl
from clbench.distributed import world
from clbench_methods.finetune import Finetune


class Flaky(Finetune):
    """finetune, with a fault after its second experience: FLAKY=kill kills rank 1 once (SIGKILL),
    FLAKY=raise raises on rank 1 every time (a single process has no rank 1 and finishes)."""

    name = "flaky"

    def after_experience(self, exp):
        super().after_experience(exp)
        if exp.index != 1 or world()[0] != 1:
            return
        marker = os.environ["FLAKY_MARKER"]
        if os.environ["FLAKY"] == "kill" and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        if os.environ["FLAKY"] == "raise":
            raise RuntimeError("a fault on rank 1 alone")


@hookimpl
def clbench_add_methods(register):
    register(Flaky)
'''


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    """The Flaky plugin installed where this process and the ranks torchrun starts both import it."""
    import sys

    from .test_plugins import install

    site = tmp_path / "site"
    install(site, monkeypatch, FLAKY, module="clbench_flaky", dist="clbench-flaky", entry="flaky")
    monkeypatch.setenv("PYTHONPATH", f"{site}:{__import__('os').environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("FLAKY_MARKER", str(tmp_path / "killed-once"))
    from clbench.plugins import reset_plugins

    reset_plugins()
    yield
    sys.modules.pop("clbench_flaky", None)
    reset_plugins()


def test_a_killed_rank_takes_its_group_down_and_the_group_resumes_the_cell(tmp_path, monkeypatch, flaky, single_process):
    monkeypatch.setenv("FLAKY", "kill")
    summary = run_suite(_suite(tmp_path, "kill", ["flaky"], 2), tmp_path / "results", progress=False)
    assert (tmp_path / "killed-once").exists()  # rank 1 died after experience 1 ...
    assert summary.ok
    record = _records(tmp_path / "results")["flaky"]
    assert record["cost"]["resumed_at_experience"] == 1  # ... and the relaunched group resumed from its checkpoint
    _same_record(single_process["finetune"], record)  # as if nothing had happened


def test_a_rank_that_raises_fails_the_cell_and_it_resumes_on_another_number_of_devices(tmp_path, monkeypatch, flaky,
                                                                                    single_process):
    monkeypatch.setenv("FLAKY", "raise")
    results = tmp_path / "results"
    summary = run_suite(_suite(tmp_path, "raise", ["flaky"], 2), results, progress=False)
    assert not summary.ok
    failed = _records(results)["flaky"]
    assert failed["status"] == "failed" and failed["error"] == "rank 1: RuntimeError: a fault on rank 1 alone"
    assert failed["acc_matrix"] == single_process["finetune"]["acc_matrix"][:1] and failed["failed_at_experience"] == 1
    assert list((results / "checkpoints").glob("*.pt"))  # the group's checkpoint after experience 0 stays
    # the same cell on one device (no rank 1: no fault) resumes from the 2-rank checkpoint
    summary = run_suite(_suite(tmp_path, "raise", ["flaky"], 1), results, retry_failed=True, progress=False)
    assert summary.ok
    record = _records(results)["flaky"]
    assert record["cell_id"] == failed["cell_id"] and record["cost"]["resumed_at_experience"] == 1
    _same_record(single_process["finetune"], record)


def test_more_devices_than_rows_of_a_batch_is_refused_before_any_cell(tmp_path):
    from clbench.errors import UserError

    path = _suite(tmp_path, "bad", ["finetune"], 8, batch_size=4)
    with pytest.raises(UserError, match=r"bad\.yaml: train\.devices: .*8 devices for a batch_size of 4"):
        run_suite(path, tmp_path / "results", progress=False)
    assert not (tmp_path / "results" / "records").exists()


def test_local_workers_get_a_block_of_gpus_each_or_a_clear_refusal():
    from types import SimpleNamespace

    from clbench.errors import UserError
    from clbench.executors.local import LocalExecutor

    cells = [SimpleNamespace(config={"train": {"devices": 2, "device": "auto"}}),
             SimpleNamespace(config={"train": {"devices": 1, "device": "auto"}})]
    executor = LocalExecutor(workers=2)
    executor.per_worker = LocalExecutor._check_devices(cells, 2, ["0", "1", "2", "3"])
    assert executor.per_worker == 2
    assert executor._env(2, 2, ["0", "1", "2", "3"])["CUDA_VISIBLE_DEVICES"] == "2,3"
    with pytest.raises(UserError, match=r"train\.devices: 2 needs 2 workers × 2 GPUs, and this machine shows 3"):
        LocalExecutor._check_devices(cells, 2, ["0", "1", "2"])
    assert LocalExecutor._check_devices(cells, 2, []) == 1  # no GPUs: the ranks are CPU processes
    cpu = [SimpleNamespace(config={"train": {"devices": 4, "device": "cpu"}})]
    assert LocalExecutor._check_devices(cpu, 1, ["0"]) == 1


def test_clbench_run_under_torchrun_is_refused_with_what_to_do_instead(tmp_path, monkeypatch):
    from clbench.errors import UserError

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match="started by torchrun.*set train.devices: N"):
        run_suite(_suite(tmp_path, "t", ["finetune"], 1), tmp_path / "results", progress=False)
    assert not (tmp_path / "results" / "records").exists()


def test_an_interrupted_group_leaves_no_ranks_folder(tmp_path, monkeypatch):
    """Ctrl-C while the ranks run: the checkpoint resumes the cell; the group's folder (task, events) goes."""
    from types import SimpleNamespace

    from clbench import rank_group

    def interrupted(devices, folder, report):
        assert (folder / "task.pkl").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(rank_group, "_launch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rank_group.run_cell_on_ranks(SimpleNamespace(cell_id="abc"), 2, tmp_path / "checkpoints", print)
    assert not (tmp_path / "ranks" / "abc").exists()

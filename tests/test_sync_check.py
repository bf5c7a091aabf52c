"""The host-sync check: its CPU stand-in catches every kind of sync, passes ordinary ops, and no built-in method syncs.

On a CPU ``no_host_sync`` cannot ask CUDA, so each kind of op that would make the host
wait for a GPU gets one small case here; the last test runs every registered training
method for one short cell with ``CLBENCH_SYNC_CHECK=error``, so a new method is covered
without anyone adding it here.
"""
import pytest
import torch

from clbench.errors import UserError
from clbench.plugins import Plugins, make_plugin_manager
from clbench.sync_check import (ENV, HostSyncError, HostSyncWarning, allow_host_sync, clear_recorded, mode_from_env,
                                no_host_sync, step_check, to_device)
from clbench.testing import run_method

X = torch.arange(6.0) - 2.5
MASK = X > 0
INDEX = torch.tensor([0, 2, 2])

# name -> (the op, the kind it must be reported as)
SYNCS = {
    "item": (lambda: X[0].item(), "value read"),
    "tolist": (lambda: X.tolist(), "value read"),
    "numpy": (lambda: X.numpy(), "value read"),
    "bool": (lambda: bool(X[0]), "value read"),
    "if": (lambda: 1 if X.sum() else 0, "value read"),
    "int": (lambda: int(X[0]), "value read"),
    "float": (lambda: float(X[0]), "value read"),
    "index": (lambda: [0, 1, 2][INDEX[0]], "value read"),
    "print": (lambda: repr(X), "value read"),
    "format": (lambda: f"{X.sum():.2f}", "value read"),
    "in": (lambda: 0.5 in X, "value read"),
    "is_nonzero": (lambda: X[0].is_nonzero(), "value read"),
    "equal": (lambda: torch.equal(X, X), "value read"),
    "allclose": (lambda: torch.allclose(X, X), "value read"),
    "nonzero": (lambda: torch.nonzero(MASK), "data-dependent shape"),
    "where(cond)": (lambda: torch.where(MASK), "data-dependent shape"),
    "unique": (lambda: torch.unique(INDEX), "data-dependent shape"),
    "Tensor.unique": (lambda: INDEX.unique(), "data-dependent shape"),
    "unique_consecutive": (lambda: torch.unique_consecutive(INDEX), "data-dependent shape"),
    "masked_select": (lambda: X.masked_select(MASK), "data-dependent shape"),
    "x[mask]": (lambda: X[MASK], "data-dependent shape"),
    "x[mask] = v": (lambda: X.clone().__setitem__(MASK, 0.0), "data-dependent shape"),
    "index_put_ mask": (lambda: X.clone().index_put_((MASK,), torch.zeros(())), "data-dependent shape"),
    "repeat_interleave": (lambda: X[:3].repeat_interleave(INDEX), "data-dependent shape"),
    "bincount": (lambda: torch.bincount(INDEX, minlength=4), "data-dependent shape"),
    "one_hot": (lambda: torch.nn.functional.one_hot(INDEX), "data-dependent shape"),
    "aten.nonzero": (lambda: torch.ops.aten.nonzero.default(X), "data-dependent shape"),  # the dispatch-level backstop
    ".cpu()": (lambda: X.cpu(), "device-to-host copy"),
    '.to("cpu")': (lambda: X.to("cpu"), "device-to-host copy"),
    "tensor(device=)": (lambda: torch.tensor([1, 2], device=X.device), "blocking host-to-device copy"),
    "host.to(device)": (lambda: torch.tensor([1, 2]).to(X.device), "blocking host-to-device copy"),
}

ORDINARY = {
    "matmul": lambda: X[None] @ X[:, None],
    "softmax": lambda: X.softmax(0),
    "scatter_add": lambda: torch.zeros(4).scatter_add_(0, INDEX, torch.ones(3)),
    "cross_entropy": lambda: torch.nn.functional.cross_entropy(X.view(2, 3), INDEX[:2]),
    "integer index": lambda: X[INDEX],
    "where(cond, a, b)": lambda: torch.where(MASK, X, 0.0),
    "masked_fill": lambda: X.masked_fill(MASK, 0.0),
    "one_hot(num_classes)": lambda: torch.nn.functional.one_hot(INDEX, 4),
    "repeat_interleave(output_size)": lambda: X[:3].repeat_interleave(INDEX, output_size=4),
    "dtype change": lambda: X.to(torch.float64),
    "same device": lambda: X.to(X.device),
    "to_device": lambda: to_device([1, 2], X.device),
    "host generator draw": lambda: float(torch.rand((), generator=torch.Generator().manual_seed(0))),
    "host list": lambda: torch.tensor([3, 1]).tolist(),
}


@pytest.mark.parametrize("name", SYNCS)
def test_each_kind_of_sync_is_caught(name):
    op, kind = SYNCS[name]
    with pytest.raises(HostSyncError, match=kind) as caught:
        with no_host_sync("cpu"):
            op()
    assert "test_sync_check.py" in str(caught.value)  # where: the line that made the call
    clear_recorded()  # a sync warns the first time it is recorded in the process
    with pytest.warns(HostSyncWarning), no_host_sync("cpu", "record") as found:
        op()
    assert [s.kind for s in found] == [kind]


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_ops_pass(name):
    with no_host_sync("cpu"):
        ORDINARY[name]()


def test_a_training_step_with_adamw_and_clipping_passes():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    total = torch.zeros(())
    for _ in range(2):  # the first step creates the optimizer's state (its step counters live on the host)
        with no_host_sync("cpu"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
            optimizer.step()
            total += loss.detach()


def test_declared_host_tensors_and_allowed_syncs_pass():
    ids = torch.tensor([4, 7])  # made outside the block: taken for a device tensor unless declared
    with pytest.raises(HostSyncError):
        with no_host_sync("cpu"):
            ids.tolist()
    with no_host_sync("cpu", host=[ids, None]):
        assert ids.tolist() == [4, 7]
    with no_host_sync("cpu"), allow_host_sync("a test's reason"):
        X.sum().item()
    with no_host_sync("cpu", "record") as found, allow_host_sync("a test's reason"):
        X.sum().item()
    assert [s.allowed for s in found] == ["a test's reason"]


def test_host_tensors_moved_to_the_device_become_device_tensors():
    with pytest.raises(HostSyncError, match="value read"):
        with no_host_sync("cpu"):
            classes = to_device([3, 5], X.device)
            classes.tolist()


def test_to_device_gives_the_values_of_torch_tensor():
    for values, dtype in (([3, 1, 2], None), ([0.5, 1.5], torch.float32), (torch.tensor([1, 2]), torch.float64)):
        expected = torch.as_tensor(values, dtype=dtype)
        got = to_device(values, "cpu", dtype)
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_modes_and_the_environment_variable(monkeypatch):
    with pytest.raises(ValueError, match="mode"):
        with no_host_sync("cpu", "warn"):
            pass
    monkeypatch.delenv(ENV, raising=False)
    assert mode_from_env() is None
    with step_check("cpu")(host=()):
        X.sum().item()  # unset: nothing is checked
    monkeypatch.setenv(ENV, "Record")
    assert mode_from_env() == "record"
    monkeypatch.setenv(ENV, "yes")
    with pytest.raises(UserError, match=ENV):
        mode_from_env()


# --- every built-in training method, one short cell each ---------------------------------------------------
TINY = {"dataset": "synthetic", "num_classes": 4, "train_per_class": 6, "test_per_class": 2}
STREAMS = {"class_incremental": {**TINY, "scenario": "class_incremental", "steps": 2, "world_domains": ["clean"]},
           "domain_incremental": {**TINY, "scenario": "domain_incremental", "world_domains": ["clean", "noisy"]}}
#: what a method cannot run on this stream without, or what keeps its cell short
NEEDS = {"zscl": {"reference": {"dataset": "synthetic", "num_classes": 4, "train_per_class": 2, "test_per_class": 1}, "we_freq": 1},
         "coda_prompt": {"layers": [[0, 1]]}, "gdumb": {"epochs": 1}, "moe_adapters": {"ae_steps": 5}}


def training_cells() -> list[tuple[str, str]]:
    """(method, scenario) for every registered method that trains and every scenario here it is built for."""
    methods = Plugins(make_plugin_manager()).methods
    return [(name, scenario) for name in methods.names() if methods.get(name).trains
            for scenario in STREAMS if scenario in methods.get(name).scenarios]


@pytest.mark.parametrize("name, scenario", training_cells())
def test_builtin_method_steps_never_sync(name, scenario, plugins, monkeypatch):
    cls = plugins.methods.get(name)
    params = dict(NEEDS.get(name, {}))
    if "buffer" in cls.Params.model_fields:
        params["buffer"] = {"size": 6}  # something to replay from the second experience on
    monkeypatch.setenv(ENV, "error")
    record = run_method(cls, params, stream=STREAMS[scenario], plugins=plugins, train={"batch_size": 8})
    assert record["status"] == "done", record.get("traceback")

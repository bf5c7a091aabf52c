"""Counting the bytes a method keeps (clbench.memory) and the record's ``memory``."""
import pytest
import torch

from clbench.memory import memory_record, nbytes


def test_nbytes_counts_each_storage_once_by_hand():
    a = torch.zeros(10, dtype=torch.float32)  # 40 bytes
    view = a[2:5]  # same storage: not counted again
    b = torch.zeros(3, dtype=torch.int64)  # 24 bytes
    assert nbytes({"a": a, "more": [view, (b, "text", 3)]}) == 40 + 24
    layer = torch.nn.Linear(4, 2)  # weight 8 + bias 2 floats = 40 bytes
    assert nbytes(layer) == 40
    assert nbytes(None) == 0


def test_memory_record_sums_kinds_and_refuses_nonsense():
    assert memory_record({"replay_images": 300, "frozen_models": 1000}) == {
        "bytes": {"frozen_models": 1000, "replay_images": 300}, "total_bytes": 1300}
    assert memory_record({}) == {"bytes": {}, "total_bytes": 0}
    with pytest.raises(ValueError, match="'fisher' must be a non-negative int"):
        memory_record({"fisher": -1})


def test_records_hold_each_methods_memory(plugins):
    from clbench.testing import run_method

    er = run_method(plugins.methods.get("er"), {"buffer": {"size": 12}}, plugins=plugins)
    assert er["memory"]["bytes"] == {"replay_images": er["buffer"]["bytes"]} and er["buffer"]["bytes"] == 12 * (3 * 32 * 32 + 8)  # uint8 pixels and an int64 label each
    icarl = run_method(plugins.methods.get("icarl"), {"buffer": {"size": 12}}, plugins=plugins)
    kinds = icarl["memory"]["bytes"]
    model_bytes = sum(p.numel() * p.element_size() for p in torch.nn.Module.state_dict(_tiny_model()).values())
    assert kinds["frozen_models"] == model_bytes  # the teacher: one copy of the model
    assert kinds["prototypes"] == 6 * _tiny_model().visual.output_dim * 4  # one float32 vector per class with exemplars
    assert icarl["memory"]["total_bytes"] == sum(kinds.values())
    zeroshot = run_method(plugins.methods.get("zeroshot"), plugins=plugins)
    assert zeroshot["memory"] == {"bytes": {}, "total_bytes": 0}


def _tiny_model():
    from clbench.models import build_clip

    return build_clip("clbench-tiny-32", None, torch.device("cpu")).model

"""Resume after interruption, concurrent runs, faults, and a fuzzed suite loader."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clbench import Method, hookimpl
from clbench.cli import main
from clbench.errors import UserError
from clbench.plugins import Plugins, make_plugin_manager
from clbench.results import ResultStore, atomic_write_text
from clbench.runner import run_cell
from clbench.suite import load_suite
from clbench.testing import stable, tiny_suite, write_suite  # stable: the record less cost and manifest


def cells_of(tmp_path, methods, plugins, **kw):
    return load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(methods, **kw)), plugins).cells


class Interrupt:
    """A plugin that stops the run (like Ctrl-C) when a given experience is reported done (its checkpoint is saved by then)."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def clbench_experience_end(self, cell, step, acc_row, learner):
        if step == self.step:
            raise KeyboardInterrupt


METHODS = ["zeroshot", {"name": "finetune", "loss": "ce"}, {"name": "er", "buffer": {"size": 6}},
           {"name": "icarl", "buffer": {"size": 6}}, {"name": "gcl_replay", "buffer": {"size": 6}},
           {"name": "dro_replay", "buffer": {"size": 6}}, {"name": "dro_replay", "update": "eg", "buffer": {"size": 6, "policy": "reservoir"}}]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m if isinstance(m, str) else "-".join(str(v) for v in m.values()))
@pytest.mark.parametrize("stop_after", [0, 1])
def test_resumed_cell_gives_the_same_record(tmp_path, plugins, method, stop_after):
    cell = cells_of(tmp_path, [method], plugins)[0]
    uninterrupted = run_cell(cell, plugins, checkpoints=tmp_path / "a")
    interrupted = Plugins(make_plugin_manager())
    interrupted.pm.register(Interrupt(stop_after))  # reported done only once its checkpoint is saved: that one exists
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, interrupted, checkpoints=tmp_path / "b")
    assert (tmp_path / "b" / f"{cell.cell_id}.pt").is_file()
    resumed = run_cell(cell, plugins, checkpoints=tmp_path / "b")
    assert resumed["cost"]["resumed_at_experience"] == stop_after + 1
    assert uninterrupted["status"] == "done"
    assert stable(resumed) == stable(uninterrupted)


def test_broken_checkpoint_is_moved_aside_and_the_cell_starts_over(tmp_path, plugins):
    cell = cells_of(tmp_path, ["finetune"], plugins)[0]
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / f"{cell.cell_id}.pt").write_bytes(b"\x80\x04garbage")
    record = run_cell(cell, plugins, checkpoints=folder)
    assert record["status"] == "done" and "resumed_at_experience" not in record["cost"]
    assert len(list(folder.glob("*.corrupt-*"))) == 1


def test_checkpoints_are_loaded_without_unpickling_code(tmp_path, plugins):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    cell = cells_of(tmp_path, ["finetune"], plugins)[0]
    folder = tmp_path / "ck"
    folder.mkdir()
    torch.save({"format": 1, "cell_id": cell.cell_id, "next_step": 1, "x": Evil()}, folder / f"{cell.cell_id}.pt")
    record = run_cell(cell, plugins, checkpoints=folder)
    assert record["status"] == "done" and len(list(folder.glob("*.corrupt-*"))) == 1


def test_a_checkpoint_the_method_cannot_restore_is_set_aside_and_the_rerun_starts_over(tmp_path, plugins):
    from clbench.checkpoint import CellCheckpoint

    cell = cells_of(tmp_path, ["finetune"], plugins)[0]
    folder = tmp_path / "ck"
    # a well-formed checkpoint of this cell whose model state belongs to some other code
    CellCheckpoint(folder, cell.cell_id).save({"next_step": 1, "rows": [], "losses": [], "initial": [], "control_before": None,
                                               "model": {"no.such.weight": torch.zeros(1)}, "method": {}, "learner": {}, "rng": {}})
    first = run_cell(cell, plugins, checkpoints=folder)
    assert first["status"] == "failed" and "could not restore the checkpoint" in first["error"]
    assert len(list(folder.glob("*.corrupt-*"))) == 1 and not list(folder.glob("*.pt"))
    second = run_cell(cell, plugins, checkpoints=folder)
    assert second["status"] == "done" and "resumed_at_experience" not in second["cost"]


class NaNAt(Method):
    """Returns a NaN loss from its second experience on."""

    name = "nan_at_1"

    def loss(self, batch):
        out = self.learner.zero_shot_logits(batch.images, batch.exp.classes).mean()
        return out * float("nan") if batch.exp.index == 1 else out


def test_nan_loss_fails_the_cell_with_its_experience_and_the_grid_goes_on(tmp_path, capsys):
    class Plugin:
        @hookimpl
        def clbench_add_methods(self, register):
            register(NaNAt)

    plugins = Plugins(make_plugin_manager())
    plugins.pm.register(Plugin())
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["nan_at_1", "zeroshot"]))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results", str(tmp_path / "out")], plugins=plugins)
    assert info.value.code == 1
    records = {r["method"]: r for r in ResultStore(tmp_path / "out").records()}
    bad = records["nan_at_1"]
    assert bad["status"] == "failed" and bad["failed_at_experience"] == 1
    assert bad["error"].startswith("FloatingPointError: non-finite training loss (nan) in experience 1")
    assert records["zeroshot"]["status"] == "done"


def test_corrupt_record_is_moved_aside_and_the_cell_runs_again(tmp_path, capsys):
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"]))
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main(["run", str(path), "--results", str(out)])
    record_file = next((out / "records").glob("*.json"))
    good = json.loads(record_file.read_text())
    record_file.write_text(record_file.read_text()[:50])  # truncated
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results", str(out)])
    assert info.value.code == 0 and "1 to run" in capsys.readouterr().err
    assert stable(json.loads(record_file.read_text())) == stable(good)
    assert len(list((out / "records" / "corrupt").iterdir())) == 1


def test_failed_write_leaves_no_half_file(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    atomic_write_text(target, "old")
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


# --- real processes -----------------------------------------------------------

def clbench(*args, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "clbench.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def slow_suite(tmp_path):
    stream = {"dataset": "synthetic", "steps": 4, "num_classes": 8, "train_per_class": 60, "test_per_class": 10, "world_domains": ["clean"]}
    suite = tiny_suite([{"name": "finetune", "loss": "ce"}, {"name": "dro_replay", "buffer": {"size": 16}}], streams=[stream], seeds=[0, 1])
    suite["train"]["epochs"] = 2
    return write_suite(tmp_path / "slow.yaml", suite)


def records_of(folder):
    return {r["cell_id"]: stable(r) for r in ResultStore(folder).records()}


def test_sigkill_mid_cell_then_rerun_matches_an_uninterrupted_run(tmp_path):
    suite = slow_suite(tmp_path)
    reference = clbench("run", suite, "--results", tmp_path / "ref")
    victim = clbench("run", suite, "--results", tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while not (checkpoints.is_dir() and any(checkpoints.glob("*.pt"))):
        assert victim.poll() is None and time.time() < deadline, "the run ended before any checkpoint was written"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)  # mid-cell: its first experience is saved, the rest is not
    victim.wait()
    killed_cell = next(checkpoints.glob("*.pt")).stem
    assert not (tmp_path / "run" / "records" / f"{killed_cell}.json").exists()
    rerun = clbench("run", suite, "--results", tmp_path / "run")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert reference.wait(timeout=300) == 0
    resumed = json.loads((tmp_path / "run" / "records" / f"{killed_cell}.json").read_text())
    assert resumed["cost"]["resumed_at_experience"] >= 1
    assert records_of(tmp_path / "run") == records_of(tmp_path / "ref") and len(records_of(tmp_path / "ref")) == 4
    assert not list(checkpoints.glob("*.pt"))  # removed once each record was written


def test_two_concurrent_runs_run_every_cell_exactly_once(tmp_path):
    suite = slow_suite(tmp_path)
    runs = [clbench("run", suite, "--results", tmp_path / "shared") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in runs]
    assert all(p.returncode == 0 for p in runs), outputs
    started = [line for _, err in outputs for line in err.splitlines() if line.endswith(" ...") and line.startswith("[")]
    labels = [line.split("] ", 1)[1] for line in started]
    assert len(labels) == 4 and len(set(labels)) == 4  # four cells, each started by exactly one process
    assert len(records_of(tmp_path / "shared")) == 4


def test_sigterm_finishes_cleanly_with_exit_130(tmp_path):
    suite = slow_suite(tmp_path)
    proc = clbench("run", suite, "--results", tmp_path / "out")
    deadline = time.time() + 120
    while not list((tmp_path / "out" / "checkpoints").glob("*.pt")) if (tmp_path / "out" / "checkpoints").is_dir() else True:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun the same command to resume" in err
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    for path in (tmp_path / "out" / "records").glob("*.json") if (tmp_path / "out" / "records").is_dir() else []:
        json.loads(path.read_text())  # every record on disk is whole


# --- fuzzing the suite loader -----------------------------------------------------

KEYS = ["name", "model", "train", "streams", "methods", "seeds", "report", "executor", "loggers", "include",
        "dataset", "steps", "lr", "epochs", "buffer", "fraction", "loss", "arch", "scenario", "num_classes", "bogus"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["zeroshot", "finetune", "er", "synthetic", "ce", "class_incremental"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)
FUZZ_PLUGINS = Plugins(make_plugin_manager())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=6), values))
def test_fuzzed_suites_load_or_fail_with_one_line(tmp_path, data):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_suite(path, FUZZ_PLUGINS)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_fuzzed_yaml_text(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_suite(path, FUZZ_PLUGINS)
    except UserError as exc:
        assert "\n" not in str(exc)


def test_a_plugin_summary_that_cannot_go_into_a_record_fails_its_cell_and_the_grid_goes_on(tmp_path, capsys):
    import numpy as np

    class BadExtras(Method):
        name = "bad_extras"
        trains = False

        def record_extras(self):
            return {"ratio": np.float32(0.5)}

    class BadMemory(Method):
        name = "bad_memory"
        trains = False

        def memory_summary(self):
            return {"prototypes": 1024 / 2}

    class Plugin:
        @hookimpl
        def clbench_add_methods(self, register):
            register(BadExtras)
            register(BadMemory)

    plugins = Plugins(make_plugin_manager())
    plugins.pm.register(Plugin())
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["bad_extras", "bad_memory", "zeroshot"]))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results", str(tmp_path / "out")], plugins=plugins)
    assert info.value.code == 1
    records = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")}
    assert records["zeroshot"]["status"] == "done"
    assert records["bad_extras"]["status"] == "failed" and "record_extras() must return plain JSON values" in records["bad_extras"]["error"]
    assert records["bad_memory"]["status"] == "failed" and "'prototypes' must be a non-negative int" in records["bad_memory"]["error"]

"""Work shared between cells (clbench/shared_results.py): computed once, identical records, safe when broken or concurrent."""
import multiprocessing
import time

import pytest

import torch

from clbench.plugins import Plugins, make_plugin_manager
from clbench.runner import run_cell
from clbench.shared_results import SharedResults, key_of, weights_fingerprint
from clbench.suite import load_suite
from clbench.testing import tiny_suite, write_suite


def test_an_entry_is_computed_once_and_loaded_identically(tmp_path):
    store = SharedResults(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"features": torch.arange(6.0).view(2, 3) / 7}

    first = store.get({"what": "x", "n": 1}, compute)
    second = SharedResults(tmp_path).get({"n": 1, "what": "x"}, compute)  # key order does not matter
    assert len(calls) == 1
    assert torch.equal(first["features"], second["features"])
    assert store.misses == 1 and store.hits == 0
    SharedResults(tmp_path).get({"what": "x", "n": 2}, compute)  # another key is another entry
    assert len(calls) == 2
    assert key_of({"a": 1, "b": [1, 2]}) == key_of({"b": [1, 2], "a": 1}) != key_of({"a": 1, "b": [2, 1]})


def test_a_broken_entry_is_recomputed_never_used(tmp_path):
    store = SharedResults(tmp_path)
    store.get({"what": "x"}, lambda: {"t": torch.ones(3)})
    (entry,) = tmp_path.rglob("*.pt")
    entry.write_bytes(entry.read_bytes()[:20])  # truncated
    again = SharedResults(tmp_path)
    assert torch.equal(again.get({"what": "x"}, lambda: {"t": torch.full((3,), 2.0)})["t"], torch.full((3,), 2.0))
    assert again.misses == 1
    assert torch.equal(SharedResults(tmp_path).get({"what": "x"}, lambda: {"t": torch.zeros(3)})["t"], torch.full((3,), 2.0))


def test_without_a_folder_nothing_is_kept(tmp_path):
    store = SharedResults(None)
    calls = []
    for _ in range(2):
        store.get({"what": "x"}, lambda: calls.append(1) or {"t": torch.ones(1)})
    assert len(calls) == 2


def _slow_compute(folder, marks):
    def compute():
        (marks / f"computed-{multiprocessing.current_process().pid}").touch()
        time.sleep(0.5)
        return {"t": torch.arange(4)}

    return SharedResults(folder).get({"what": "slow"}, compute)["t"].tolist()


def test_concurrent_processes_compute_a_key_once(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_slow_compute, [(tmp_path / "store", marks)] * 2)
    assert results == [[0, 1, 2, 3]] * 2
    assert len(list(marks.iterdir())) == 1  # the second waited on the lock and loaded the first one's result


def test_the_weights_fingerprint_follows_the_weights():
    a = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(200, 3))
    b = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(200, 3))
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b[1].bias[2] += 1e-6  # a small tensor is fingerprinted whole
    assert weights_fingerprint(a) != weights_fingerprint(b)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b[0].weight.mul_(1.01)  # a trained layer changes everywhere, so in its sampled values
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_the_fingerprint_follows_the_modules_and_every_buffer():
    a = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    b = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.SiLU())  # same weights, another activation
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) != weights_fingerprint(b)
    c = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    c.load_state_dict(a.state_dict())
    a.register_buffer("mask", torch.zeros(3), persistent=False)  # e.g. a text tower's attention mask
    c.register_buffer("mask", torch.ones(3), persistent=False)
    assert weights_fingerprint(a) != weights_fingerprint(c)


def test_a_store_folder_deleted_meanwhile_loses_the_entry_never_the_result(tmp_path):
    import shutil

    store = SharedResults(tmp_path / "store")

    def compute():
        shutil.rmtree(tmp_path / "store")  # another process clears the cache folder
        return {"t": torch.ones(2)}

    assert torch.equal(store.get({"what": "x"}, compute)["t"], torch.ones(2))


def test_bad_environment_is_one_line_before_any_cell(tmp_path, monkeypatch):
    from clbench.api import run_suite
    from clbench.errors import UserError

    suite = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"]))
    monkeypatch.setenv("CLBENCH_SYNC_CHECK", "erorr")
    with pytest.raises(UserError, match="CLBENCH_SYNC_CHECK='erorr'"):
        run_suite(suite, tmp_path / "out")
    monkeypatch.delenv("CLBENCH_SYNC_CHECK")
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "afile"))
    with pytest.raises(UserError, match="CLBENCH_CACHE_DIR: .* is a file"):
        run_suite(suite, tmp_path / "out")
    assert not (tmp_path / "out" / "records").exists() or not any((tmp_path / "out" / "records").iterdir())


METHODS = ["zeroshot", {"name": "finetune", "loss": "ce"}, "simplecil", {"name": "er", "buffer": {"size": 6}}]


def _records(cells, plugins):
    return [run_cell(cell, plugins) for cell in cells]


def test_records_are_identical_with_and_without_sharing_and_the_initial_evaluation_is_done_once(tmp_path, monkeypatch):
    plugins = Plugins(make_plugin_manager())
    cells = load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(METHODS)), plugins).cells
    monkeypatch.setenv("CLBENCH_CACHE_DIR", "off")
    alone = _records(cells, plugins)
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    shared = _records(cells, plugins)
    keys = ("status", "acc_matrix", "initial_acc", "control_acc", "metrics", "train_loss", "method_state")
    assert [{k: r.get(k) for k in keys} for r in shared] == [{k: r.get(k) for k in keys} for r in alone]
    assert all(r["status"] == "done" for r in shared)
    test_images = sum(e["test_size"] for e in alone[0]["experiences"])
    # alone, every cell encodes its test sets for Z; shared, only the first cell does
    assert [r["cost"]["eval_images"] for r in alone][0] == test_images
    assert shared[0]["cost"]["eval_images"] == test_images and shared[0]["cost"]["shared_reused"] == 0
    for alone_r, shared_r in zip(alone[1:], shared[1:]):
        assert shared_r["cost"]["eval_images"] == alone_r["cost"]["eval_images"] - test_images
        assert shared_r["cost"]["shared_reused"] > 0


def test_a_checkpoint_holds_the_weights_only_once_they_changed(tmp_path):
    plugins = Plugins(make_plugin_manager())
    cells = load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot", {"name": "finetune", "loss": "ce"}])), plugins).cells
    saved = {}

    class Keep:
        from clbench import hookimpl

        @hookimpl
        def clbench_experience_end(self, cell, step, acc_row, learner):
            if step == 0:
                saved[cell.method] = torch.load(tmp_path / "ck" / f"{cell.cell_id}.pt", weights_only=True)

    watching = Plugins(make_plugin_manager())
    watching.pm.register(Keep())
    for cell in cells:
        run_cell(cell, watching, checkpoints=tmp_path / "ck")
    assert saved["zeroshot"]["model"] is None  # as built: the resumed cell rebuilds it
    assert saved["finetune"]["model"] is not None and saved["finetune"]["learner"]["model_changed"]


def test_a_zeroshot_cell_of_ten_steps_does_the_work_of_two(tmp_path, monkeypatch):
    """Over the same test images, 10 steps encode as many images and prompts as 2, and checkpoint no weights."""
    from clbench.learner import Learner

    monkeypatch.setenv("CLBENCH_CACHE_DIR", "off")  # this cell's own work
    text_passes = []
    encode_texts = Learner.encode_texts
    monkeypatch.setattr(Learner, "encode_texts", lambda self, texts: text_passes.append(len(texts)) or encode_texts(self, texts))
    plugins = Plugins(make_plugin_manager())
    work = {}
    for steps in (2, 10):
        stream = {"name": f"ci{steps}", "dataset": "synthetic", "scenario": "class_incremental", "steps": steps,
                  "num_classes": 20, "train_per_class": 2, "test_per_class": 4, "world_domains": ["clean"], "holdout_classes": 2}
        (cell,) = load_suite(write_suite(tmp_path / f"s{steps}.yaml", tiny_suite(["zeroshot"], streams=[stream])), plugins).cells
        text_passes.clear()
        record = run_cell(cell, plugins, checkpoints=tmp_path / f"ck{steps}")
        assert record["status"] == "done" and len(record["acc_matrix"]) == steps
        work[steps] = (record["cost"]["eval_images"], list(text_passes))
    assert work[10] == work[2]
    eval_images, passes = work[2]
    assert eval_images == 20 * 4  # each test image (control set included) once
    assert len(passes) == 1  # every class's prompts in one pass

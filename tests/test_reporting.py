"""Paper suites, figures and run loggers."""
import csv
import os
import json
from pathlib import Path

import pytest

from clbench.cli import main
from clbench.results import ResultStore
from clbench.suite import load_suite
from clbench.testing import tiny_suite, write_suite

SUITES = Path(__file__).parent.parent / "suites"


@pytest.mark.parametrize("path", sorted(p for p in SUITES.glob("*.yaml") if not p.stem.endswith("_base")), ids=lambda p: p.name)
def test_every_shipped_suite_validates(path, plugins):
    assert load_suite(path, plugins).cells


def test_paper_grid(plugins):
    suite = load_suite(SUITES / "paper.yaml", plugins)
    assert len(suite.cells) == 270  # 3 streams × (zeroshot + finetune + 4 replay methods × 4 buffers) × 5 seeds
    assert {c.stream_label for c in suite.cells} == {"cifar100-10", "imagenet1k-10", "domainnet-6"}
    by_stream = {c.stream_label: c.config["train"]["epochs"] for c in suite.cells}
    assert by_stream == {"cifar100-10": 5, "imagenet1k-10": 1, "domainnet-6": 2}  # per-stream train overrides
    assert all(c.config["model"] == {"arch": "ViT-B-16", "pretrained": "openai"} for c in suite.cells)
    fractions = {c.config["params"]["buffer"]["fraction"] for c in suite.cells if c.method == "dro_replay"}
    assert fractions == {0.01, 0.02, 0.05, 0.1}


def test_clip_baselines_grid_holds_every_built_in_method(plugins):
    suite = load_suite(SUITES / "clip_baselines.yaml", plugins)
    assert {c.method for c in suite.cells} == set(plugins.methods.names())  # every registered built-in (no plugin installed)
    assert len(suite.cells) == len(plugins.methods.names()) * 3  # one variant per method × 3 seeds
    assert {c.config["stream"]["class_order"] for c in suite.cells} == {"icarl"}
    assert all(c.config["model"] == {"arch": "ViT-B-16", "pretrained": "openai"} for c in suite.cells)


def test_train_override_precedence(tmp_path, plugins):
    suite = tiny_suite([{"name": "finetune", "train": {"lr": 0.5}}, "zeroshot"],
                       streams=[{"dataset": "synthetic", "steps": 2, "num_classes": 4, "train": {"lr": 0.25, "epochs": 3}}])
    cells = load_suite(write_suite(tmp_path / "s.yaml", suite), plugins).cells
    train = {c.method: c.config["train"] for c in cells}
    assert train["finetune"]["lr"] == 0.5 and train["finetune"]["epochs"] == 3  # method beats stream beats suite
    assert train["zeroshot"]["lr"] == 0.25 and "train" not in cells[0].config["stream"]


def run(tmp_path, capsys, suite, *extra):
    path = write_suite(tmp_path / "s.yaml", suite)
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results", str(tmp_path / "out"), *extra])
    capsys.readouterr()
    assert info.value.code == 0
    return tmp_path / "out"


def test_figures(tmp_path, capsys):
    suite = tiny_suite(["finetune", {"name": "er", "buffer": {"size": [2, 8]}}], seeds=[0, 1], report={"plots": True})
    out = run(tmp_path, capsys, suite)
    names = {p.name for p in (out / "plots").iterdir()}
    assert {"accuracy_synthetic-ci3.png", "accuracy_synthetic-ci3.pdf", "buffer_synthetic-ci3.png", "buffer_synthetic-ci3.pdf",
            "mechanism_synthetic-ci3.png", "mechanism_synthetic-ci3.pdf"} <= names  # er at two buffer sizes: a sweep
    assert len(list((out / "plots" / "heatmaps").glob("*.png"))) == 6
    assert (out / "plots" / "buffer_synthetic-ci3.pdf").read_bytes()[:4] == b"%PDF"
    for record in map(json.loads, map(Path.read_text, (out / "records").glob("*.json"))):  # what the figures drew
        S, T = record["drift"]["since_learned"], len(record["acc_matrix"])
        assert [row[t + 1:] for t, row in enumerate(S)] == [[None] * (T - t - 1) for t in range(T)]
        assert [S[t][t] for t in range(T)] == pytest.approx([1.0] * T, abs=1e-5)
        assert record["metrics"]["drift"] == pytest.approx(sum(1 - S[-1][j] for j in range(T - 1)) / (T - 1))
        contrast = record["contrast"]
        assert len(contrast) == T and contrast[0]["old_class_mass"] is None
        if record["method"] == "finetune":  # a batch-local loss on new data only: old classes get neither weight nor negatives
            assert all(e["old_class_mass"] == 0 and e["negatives_old"] == 0 for e in contrast[1:])
        else:  # every step replays exemplars of old classes
            assert all(0 < e["old_class_mass"] < 1 and e["negatives_old"] > 0 for e in contrast[1:])


def test_csv_and_tensorboard_loggers(tmp_path, capsys):
    out = run(tmp_path, capsys, tiny_suite(["zeroshot", "finetune"], loggers=["csv", "tensorboard"]))
    rows = list(csv.DictReader(open(out / "steps.csv")))
    assert len(rows) == 2 * 3 and {r["step"] for r in rows} == {"0", "1", "2"}
    assert all(0 <= float(r["seen_accuracy"]) <= 1 for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = list((out / "tensorboard").iterdir())
    assert len(runs) == 2
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    assert "accuracy/seen" in acc.Tags()["scalars"] and len(acc.Scalars("accuracy/seen")) == 3
    record = json.loads((out / "records" / f"{runs[0].name}.json").read_text())
    assert acc.Scalars("metrics/last")[0].value == pytest.approx(record["metrics"]["last"], abs=1e-6)


def test_unknown_logger_is_a_suite_error(tmp_path, plugins):
    with pytest.raises(Exception, match="loggers: unknown logger 'tensorbord' \\(did you mean 'tensorboard'\\?\\)"):
        load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], loggers=["tensorbord"])), plugins)


@pytest.mark.parametrize("name, module", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_optional_loggers_offline(tmp_path, capsys, monkeypatch, name, module):
    pytest.importorskip(module)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = run(tmp_path, capsys, tiny_suite(["zeroshot", {"name": "finetune", "loss": "ce"}], loggers=[name]))
    if name == "wandb":  # one offline run per cell, named by its cell id
        ids = {r["cell_id"] for r in ResultStore(out).records()}
        assert {p.name.rsplit("-", 1)[1] for p in (out / "wandb").glob("offline-run-*")} == ids and len(ids) == 2
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name.startswith("clbench-")]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    records = {r["variant"]: r for r in ResultStore(out).records()}
    for r in runs:
        record = records[r.data.params["variant"]]
        assert r.data.metrics["last"] == pytest.approx(record["metrics"]["last"])
        seen = [m.value for m in client.get_metric_history(r.info.run_id, "accuracy_seen")]
        assert len(seen) == len(record["acc_matrix"])  # one point per experience


def test_missing_optional_logger_package_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    import importlib

    monkeypatch.setattr(importlib, "import_module", lambda name, *a: no_wandb(name))
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], loggers=["wandb"]))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "pip install 'clbench[wandb]'" in err


def test_tensorboard_logger_starts_while_torch_is_still_lazily_imported(tmp_path):
    """`clbench run` builds its loggers before any cell imports torch for real; open_clip must import after."""
    import subprocess
    import sys

    code = ("import lazy_loader as lazy; lazy.load('torch')\n"
            "from clbench.loggers.builtin import TensorBoardLogger\n"
            f"TensorBoardLogger({str(tmp_path)!r}, None)\n"
            "import open_clip\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_suite_with_loggers_keeps_its_own_name(tmp_path, plugins):
    suite = load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], name="mine", loggers=["csv"])), plugins)
    assert suite.name == "mine"  # its results go to results/mine, not results/csv

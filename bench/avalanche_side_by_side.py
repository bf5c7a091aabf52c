"""clbench against Avalanche on identical work: Naive vs a finetune-style cell, Replay vs er.

    python bench/avalanche_side_by_side.py [--pairs 5] [--venv bench/.venv-avalanche]

Avalanche (avalanche-lib) runs in its own virtual environment, which this
script creates on first use (torch from this machine's pip, avalanche-lib and
open_clip_torch from PyPI). Both sides train the same tiny CLIP (the shipped
tinyworld weights) on the same synthetic class-incremental stream (40
classes, 5 steps, same class order), with cross-entropy over every class's
prompt (both towers trained), AdamW, the same epochs and batch sizes, and
evaluate every test set before training and after each step. Replay: 400
exemplars, one replayed image per new image. Times exclude imports and
building the model and data; each pair alternates which side runs first.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from clbench import Method  # noqa: E402
from clbench.losses import cross_entropy_loss  # noqa: E402
from clbench.models import CONFIG_DIR, PROJECT_WEIGHTS, build_clip  # noqa: E402
from clbench.plugins import Plugins, make_plugin_manager  # noqa: E402
from clbench.replay import ReplayMethod  # noqa: E402
from clbench.runner import build_cell_stream, run_cell  # noqa: E402
from clbench.suite import load_suite  # noqa: E402
from clbench.testing import write_suite  # noqa: E402

STREAM = {"dataset": "synthetic", "steps": 5, "num_classes": 40, "train_per_class": 60, "test_per_class": 20, "world_domains": ["clean"]}
TRAIN = {"epochs": 2, "batch_size": 64, "eval_batch_size": 256, "lr": 1e-4, "weight_decay": 0.1, "schedule": "constant"}
MEMORY = 400


def all_class_loss(method, images, labels, exp):
    learner = method.learner
    classes = list(range(learner.dataset.num_classes))
    text = learner.class_features(classes, template=0, grad=True)
    return cross_entropy_loss(learner.encode_images(images), labels, text, torch.arange(len(classes), device=labels.device), learner.logit_scale)


class AllClassCE(Method):
    """finetune with cross-entropy over every class's prompt: the work Avalanche's Naive does here."""

    name = "bench_naive"
    loss = all_class_loss


class AllClassER(ReplayMethod):
    """er with the same loss: the work Avalanche's Naive + ReplayPlugin does here."""

    name = "bench_replay"
    loss = all_class_loss


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} (avalanche-lib, torch, open_clip_torch) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.14.1", "torchvision==0.29.1", "avalanche-lib", "open_clip_torch"], check=True)
    return python


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--venv", type=Path, default=ROOT / "bench" / ".venv-avalanche")
    args = ap.parse_args()
    python = ensure_venv(args.venv)
    plugins = Plugins(make_plugin_manager())
    plugins.methods.register("bench_naive", AllClassCE, "bench")
    plugins.methods.register("bench_replay", AllClassER, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        suite = {"name": "side_by_side", "model": {"arch": "clbench-tiny-32", "pretrained": "tinyworld"}, "train": TRAIN,
                 "streams": [STREAM], "seeds": [0], "methods": ["bench_naive", {"name": "bench_replay", "buffer": {"size": MEMORY}}]}
        cells = {c.method: c for c in load_suite(write_suite(Path(tmp) / "s.yaml", suite), plugins).cells}
        clip = build_clip("clbench-tiny-32", "tinyworld")
        stream = build_cell_stream(cells["bench_naive"], plugins, 32)
        data = stream.dataset
        spec_path = Path(tmp) / "spec.pt"
        base = {
            "seed": 0, "threads": torch.get_num_threads(), "config_dir": str(CONFIG_DIR), "arch": "clbench-tiny-32",
            "weights": str(PROJECT_WEIGHTS[("clbench-tiny-32", "tinyworld")]), "template": data.templates[0],
            "class_names": data.class_names, "mean": list(clip.mean), "std": list(clip.std),
            "train_x": data.train.images, "train_y": data.train.labels, "test_x": data.test.images, "test_y": data.test.labels,
            "class_order": stream.class_order, "steps": STREAM["steps"], "epochs": TRAIN["epochs"], "batch_size": TRAIN["batch_size"],
            "eval_batch_size": TRAIN["eval_batch_size"], "lr": TRAIN["lr"], "weight_decay": TRAIN["weight_decay"],
        }

        def avalanche(mem_size):
            torch.save({**base, "mem_size": mem_size}, spec_path)
            out = subprocess.run([str(python), str(ROOT / "bench" / "avalanche_worker.py"), str(spec_path)], check=True,
                                 capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]

        def setup_seconds():
            start = time.perf_counter()
            build_clip("clbench-tiny-32", "tinyworld")
            build_cell_stream(cells["bench_naive"], plugins, 32)
            return time.perf_counter() - start

        def ours(name):
            start = time.perf_counter()
            record = run_cell(cells[name], plugins)
            assert record["status"] == "done", record.get("error")
            return time.perf_counter() - start - setup_seconds_median

        setup_seconds_median = statistics.median(setup_seconds() for _ in range(3))
        for ours_name, mem, label in (("bench_naive", 0, "Naive vs finetune (ce)"), ("bench_replay", MEMORY, "Replay vs er")):
            ratios = []
            for i in range(args.pairs):
                if i % 2 == 0:
                    a, c = avalanche(mem), ours(ours_name)
                else:
                    c, a = ours(ours_name), avalanche(mem)
                ratios.append(a / c)
                print(f"  {label} pair {i + 1}: avalanche {a:.2f}s, clbench {c:.2f}s, avalanche/clbench {a / c:.2f}", flush=True)
            print(f"{label}: avalanche / clbench = {statistics.median(ratios):.2f} median over {len(ratios)} pairs "
                  f"(min {min(ratios):.2f}, max {max(ratios):.2f})", flush=True)


if __name__ == "__main__":
    main()

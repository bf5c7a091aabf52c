"""Harness overhead: a clbench cell against a bare PyTorch loop doing exactly the same work.

    python bench/overhead.py [--pairs 5]

Same tiny CLIP (same seed), same synthetic stream (built the same way), same
AdamW parameter groups, cosine schedule, batch order, contrastive loss, replay
mixing (for `er`), and evaluation of every test set after every step with
the prompt ensemble. Each pair runs the bare loop and the clbench cell back
to back (order alternating); the script prints the median and spread of the
time ratio clbench / bare, per processed image. Also: a `zeroshot` cell of T
steps against one zero-shot pass over the test sets.
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clbench.losses import contrastive_loss  # noqa: E402
from clbench.models import build_clip  # noqa: E402
from clbench.plugins import Plugins, make_plugin_manager  # noqa: E402
from clbench.runner import build_cell_stream, run_cell  # noqa: E402
from clbench.suite import load_suite  # noqa: E402
from clbench.testing import write_suite  # noqa: E402

STREAM = {"dataset": "synthetic", "steps": 5, "num_classes": 40, "train_per_class": 60, "test_per_class": 20, "world_domains": ["clean"]}
TRAIN = {"epochs": 2, "batch_size": 64, "lr": 1e-4, "weight_decay": 0.1, "eval_batch_size": 256}


def bare_loop(cell, plugins, replay: int) -> float:
    """The same cell, written by hand; returns seconds."""
    start = time.perf_counter()
    torch.manual_seed(cell.seed)
    clip = build_clip("clbench-tiny-32", "tinyworld")
    stream = build_cell_stream(cell, plugins, clip.image_size)
    model, tok = clip.model, clip.tokenizer
    mean, std = torch.tensor(clip.mean).view(1, 3, 1, 1), torch.tensor(clip.std).view(1, 3, 1, 1)
    names, templates = stream.dataset.class_names, stream.dataset.templates
    gen = torch.Generator().manual_seed(cell.seed)
    buf_gen = torch.Generator().manual_seed(cell.seed + 7919)
    memory_x, memory_y = None, None

    def prep(x):
        return (x.float() / 255 - mean) / std

    @torch.no_grad()
    def evaluate(t):
        model.eval()
        for j, exp in enumerate(stream.experiences):
            classes = stream.eval_classes(t, j)
            prompts = [tp.format(names[c]) for c in classes for tp in templates]
            text = F.normalize(model.encode_text(tok(prompts)).float(), dim=-1).view(len(classes), len(templates), -1).mean(1)
            text = F.normalize(text, dim=-1)
            ids = torch.tensor(classes)
            for i in range(0, len(exp.test), TRAIN["eval_batch_size"]):
                x = prep(exp.test.images[i : i + TRAIN["eval_batch_size"]])
                pred = ids[(F.normalize(model.encode_image(x).float(), dim=-1) @ text.t()).argmax(1)]
                (pred == exp.test.labels[i : i + TRAIN["eval_batch_size"]]).sum()

    evaluate(-1)
    for t, exp in enumerate(stream.experiences):
        params = list(model.parameters())
        opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": TRAIN["weight_decay"]},
                                 {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=TRAIN["lr"])
        steps = TRAIN["epochs"] * math.ceil(len(exp.train) / TRAIN["batch_size"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))  # noqa: B023 (used in this experience only)
        model.train()
        for _ in range(TRAIN["epochs"]):
            order = torch.randperm(len(exp.train), generator=gen)
            for i in range(0, len(order), TRAIN["batch_size"]):
                idx = order[i : i + TRAIN["batch_size"]]
                x, y = exp.train.images[idx], exp.train.labels[idx]
                if replay and memory_x is not None:
                    r = torch.randint(0, len(memory_x), (TRAIN["batch_size"],), generator=buf_gen)
                    x, y = torch.cat([x, memory_x[r]]), torch.cat([y, memory_y[r]])
                classes = y.unique()
                text = F.normalize(model.encode_text(tok([templates[0].format(names[c]) for c in classes.tolist()])).float(), dim=-1)
                img = F.normalize(model.encode_image(prep(x)).float(), dim=-1)
                loss = contrastive_loss(img, y, text, classes, model.logit_scale.exp().clamp(max=100))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        if replay:  # class-balanced random memory of `replay` images
            seen = stream.seen(t)
            xs = torch.cat([memory_x, exp.train.images]) if memory_x is not None else exp.train.images
            ys = torch.cat([memory_y, exp.train.labels]) if memory_y is not None else exp.train.labels
            keep = torch.cat([(ys == c).nonzero().flatten()[: replay // len(seen)] for c in seen])
            memory_x, memory_y = xs[keep], ys[keep]
        evaluate(t)
    return time.perf_counter() - start


def harness(cell, plugins) -> float:
    start = time.perf_counter()
    record = run_cell(cell, plugins)
    assert record["status"] == "done", record.get("error")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    plugins = Plugins(make_plugin_manager())
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        suite = {"name": "overhead", "model": {"arch": "clbench-tiny-32", "pretrained": "tinyworld"}, "train": TRAIN,
                 "streams": [STREAM], "methods": ["finetune", {"name": "er", "buffer": {"size": 400}}, "zeroshot"], "seeds": [0]}
        cells = {c.method: c for c in load_suite(write_suite(Path(tmp) / "s.yaml", suite), plugins).cells}
    for name, replay in (("finetune", 0), ("er", 400)):
        ratios = []
        for i in range(args.pairs):
            if i % 2 == 0:
                bare, ours = bare_loop(cells[name], plugins, replay), harness(cells[name], plugins)
            else:
                ours, bare = harness(cells[name], plugins), bare_loop(cells[name], plugins, replay)
            ratios.append(ours / bare)
            print(f"  {name} pair {i + 1}: bare {bare:.2f}s, clbench {ours:.2f}s, ratio {ours / bare:.3f}", flush=True)
        print(f"{name}: clbench / bare = {statistics.median(ratios):.3f} median over {len(ratios)} pairs (min {min(ratios):.3f}, max {max(ratios):.3f})")

    ratios = []
    for i in range(args.pairs):
        t0 = time.perf_counter()
        record = run_cell(cells["zeroshot"], plugins)
        cell_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        clip = build_clip("clbench-tiny-32", "tinyworld")
        stream = build_cell_stream(cells["zeroshot"], plugins, clip.image_size)
        from clbench.config import TrainConfig
        from clbench.learner import Learner

        learner = Learner(clip, stream, TrainConfig(**TRAIN), seed=0)
        for exp in stream.experiences:
            learner.zero_shot_accuracy(exp.test, stream.seen(len(stream.experiences) - 1))
        one_pass = time.perf_counter() - t0
        ratios.append(cell_s / one_pass)
        print(f"  zeroshot pair {i + 1}: cell of {len(record['acc_matrix'])} steps {cell_s:.2f}s, one pass {one_pass:.2f}s", flush=True)
    print(f"zeroshot: cell of T steps / one pass over the test sets = {statistics.median(ratios):.3f} median over {len(ratios)} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()

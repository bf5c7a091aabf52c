"""Replay-memory statistics on three small streams: per-experience shares, domains stored, repeats in a batch.

(a) reservoir with a growing capacity (per_class 5; 3 class-incremental experiences of 2 classes x 50):
    mean exemplars per experience (unbiased: 10 / 10 / 10);
(b) class_balanced, per_class 2, 4 domains of 2 classes x 50: mean exemplars per domain (unbiased: 1 each)
    and the seeds whose memory holds the 4th domain;
(c) sample(128) from 500 exemplars: repeated exemplars per replay batch.

    python bench/replay_memory_stats.py                 # this checkout's buffer
    python bench/replay_memory_stats.py --against REV   # and clbench/buffer.py as of git revision REV, side by side
"""
import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clbench.data.base import InMemoryImageSet  # noqa: E402
import clbench.buffer as new  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--against", help="a git revision whose clbench/buffer.py to measure as 'before'")
parser.add_argument("--seeds", type=int, default=200)
args = parser.parse_args()
modules = [(new, "this checkout")]
if args.against:
    src = subprocess.run(["git", "show", f"{args.against}:clbench/buffer.py"], capture_output=True, text=True, check=True).stdout
    path = tempfile.NamedTemporaryFile("w", suffix="_old_buffer.py", delete=False)
    path.write(src)
    path.close()
    spec = importlib.util.spec_from_file_location("clbench.old_buffer", path.name)
    old = importlib.util.module_from_spec(spec)
    sys.modules["clbench.old_buffer"] = old
    spec.loader.exec_module(old)
    modules.insert(0, (old, args.against))
SEEDS, n = args.seeds, 50

def toy(labels, experience):
    labels = torch.as_tensor(labels)
    img = torch.full((len(labels), 3, 1, 1), experience, dtype=torch.uint8)  # the pixel names the experience
    return InMemoryImageSet(img, labels)

def per_experience(mod, stream, spec, seen_of):
    tot = torch.zeros(len(stream)); fourth = 0
    for s in range(SEEDS):
        b = mod.ReplayBuffer(mod.BufferSpec(**spec), sum(map(len, stream)), seed=s)
        for t, labels in enumerate(stream):
            b.update(toy(labels, t), seen_of(t))
        counts = torch.bincount(b.data.images[:, 0, 0, 0].long(), minlength=len(stream)).double()
        tot += counts; fourth += int(counts[-1] > 0)
    return [round(x, 2) for x in (tot / SEEDS).tolist()], fourth

for mod, name in modules:
    a, _ = per_experience(mod, [[2 * t] * n + [2 * t + 1] * n for t in range(3)], dict(per_class=5, policy="reservoir"),
                          lambda t: list(range(2 * t + 2)))
    print(f"{name}: (a) reservoir per_class=5, 3 experiences x (2 classes x {n}), mean exemplars per experience over {SEEDS} seeds: {a}")
    b, fourth = per_experience(mod, [[0] * n + [1] * n for _ in range(4)], dict(per_class=2), lambda t: [0, 1])
    print(f"{name}: (b) class_balanced per_class=2, 4 domains x (2 classes x {n}), mean exemplars per domain: {b}; "
          f"seeds storing domain 4: {fourth}/{SEEDS}")
    buf = mod.ReplayBuffer(mod.BufferSpec(size=500), 1000, seed=0)
    ids = torch.arange(1000)
    img = torch.zeros(1000, 3, 1, 2, dtype=torch.uint8); img[:, 0, 0, 0] = ids % 256; img[:, 0, 0, 1] = ids // 256
    buf.update(InMemoryImageSet(img, ids % 10), list(range(10)))
    dups = []
    for _ in range(SEEDS):
        x = buf.sample(128)[0]
        key = x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()
        dups.append(len(key) - len(key.unique()))
    print(f"{name}: (c) sample(128) from {len(buf)} exemplars: mean repeats per batch over {SEEDS} batches: {sum(dups) / len(dups):.2f}, max {max(dups)}")

"""What measuring the mechanism costs a cell: drift matrices and contrast statistics on vs off, side by side.

Runs one cell of suites/small_buffer.yaml (``--method``, default dro_replay at 1 exemplar per class on
world-ci5, seed 0) in this process, alternating between the harness as shipped ("on") and the
harness with the drift tracker and the per-step contrast statistics replaced by no-ops ("off"),
after one warm-up run. Prints each pair's wall seconds and the median ratio on / off with its
min–max, and checks that the accuracy matrices of both are equal (the measurements never change
training). First, the contrast statistics alone: microseconds per training step (3 runs of 1,000
steps, B = 72 images of 16 classes, one symmetric note per step).

    python bench/mechanism_overhead.py [--pairs 5] [--method er|gcl_replay|dro_replay] [--stream world-di4]
"""
import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clbench.contrast_stats import ContrastStats  # noqa: E402
from clbench.drift import DriftTracker  # noqa: E402
from clbench.plugins import Plugins, make_plugin_manager  # noqa: E402
from clbench.runner import run_cell  # noqa: E402
from clbench.suite import load_suite  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--pairs", type=int, default=5)
parser.add_argument("--method", default="dro_replay")
parser.add_argument("--stream", default="world-ci5")
args = parser.parse_args()

plugins = Plugins(make_plugin_manager())
suite = load_suite(Path(__file__).resolve().parent.parent / "suites" / "small_buffer.yaml", plugins)
cell = next(c for c in suite.cells if c.method == args.method and c.stream_label == args.stream and c.seed == 0
            and (c.params.get("buffer") or {}).get("per_class") == 1 and c.params.get("update", "kl") == "kl")
print(f"cell: {cell.variant} | {cell.stream_label} | seed {cell.seed}")

import torch  # noqa: E402

from clbench.contrast_stats import note_contrast  # noqa: E402

stats = ContrastStats(70, "cpu")
stats.begin_experience(list(range(8)))
labels = torch.randint(0, 16, (72,), generator=torch.Generator().manual_seed(0))
prompts = labels.unique()
per_step = []
for _ in range(3):
    began = time.perf_counter()
    for _ in range(1000):
        with stats.step():
            note_contrast(labels, prompts, symmetric=True)
    per_step.append((time.perf_counter() - began) / 1000 * 1e6)
print(f"contrast statistics: {statistics.median(per_step):.1f} µs per step (median of 3 runs of 1,000; "
      f"{min(per_step):.1f}–{max(per_step):.1f})")


@contextlib.contextmanager
def measurements_off():
    saved = DriftTracker.start, DriftTracker.step, ContrastStats.step
    DriftTracker.start = DriftTracker.step = lambda *a, **k: None
    ContrastStats.step = lambda self: contextlib.nullcontext()
    try:
        yield
    finally:
        DriftTracker.start, DriftTracker.step, ContrastStats.step = saved


def timed(off: bool):
    began = time.perf_counter()
    with measurements_off() if off else contextlib.nullcontext():
        record = run_cell(cell, plugins)
    assert record["status"] == "done", record.get("error")
    return time.perf_counter() - began, record


timed(False)  # warm-up: shared zero-shot results, decoded data, allocator
ratios = []
for i in range(args.pairs):
    order = (False, True) if i % 2 == 0 else (True, False)
    results = {off: timed(off) for off in order}
    (on_s, on_record), (off_s, off_record) = results[False], results[True]
    assert on_record["acc_matrix"] == off_record["acc_matrix"], "the measurements changed training"
    ratios.append(on_s / off_s)
    print(f"pair {i + 1}: on {on_s:.3f} s, off {off_s:.3f} s, ratio {on_s / off_s:.3f} "
          f"(drift_s {on_record['cost']['drift_s']:.4f})")
print(f"on / off: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) over {len(ratios)} pairs")

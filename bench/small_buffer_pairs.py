"""Where dro_replay beats er, memory by memory: paired differences over seeds from a small_buffer run.

For each stream and memory size, the mean ± sample std over seeds of er's, gcl_replay's and
dro_replay's (``update: kl``, and the ``uniform`` ablation) last accuracy, old-task accuracy (mean
over j < T of A[T][j]), forgetting and drift, and the paired difference to er over matching seeds of
forgetting and old-task accuracy with a paired t-test's p (scipy). Also each method's mean over
experiences of the old-class weight mass and of the old classes' negatives per step (record.contrast).

    python bench/small_buffer_pairs.py results/small_buffer [--md]
"""
import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from scipy.stats import ttest_rel

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder", type=Path)
args = parser.parse_args()

METRICS = ("last", "old_task", "forgetting", "drift")
runs = defaultdict(dict)  # (stream, exemplars, method label) -> seed -> record
for path in sorted((args.folder / "records").glob("*.json")):
    r = json.loads(path.read_text())
    if r.get("status") != "done":
        continue
    update = (r["config"]["params"] or {}).get("update")
    label = r["method"] + (f" ({update})" if update else "")
    A = r["acc_matrix"]
    r["metrics"]["old_task"] = statistics.mean(A[-1][:-1])  # the reviewers' "old-task accuracy"
    runs[(r["stream"], r["buffer"]["exemplars"], label)][r["seed"]] = r


def fmt(values):
    return f"{100 * statistics.mean(values):5.1f} ± {100 * statistics.stdev(values):4.1f}" if len(values) > 1 else "–"


def contrast_mean(record, key):
    values = [e[key] for e in record.get("contrast") or [] if e and e[key] is not None]
    return statistics.mean(values) if values else None


print("| stream | memory | method | " + " | ".join(METRICS) + " | old-class mass | old-class negatives | "
      "Δ forgetting vs er (p) | Δ old_task vs er (p) |")
print("|---|---:|---|" + "---:|" * (len(METRICS) + 4))
for stream, size in sorted({(s, n) for s, n, _ in runs}):
    er = runs.get((stream, size, "er"), {})
    for label in ("er", "gcl_replay", "dro_replay (kl)", "dro_replay (uniform)"):
        mine = runs.get((stream, size, label))
        if not mine:
            continue
        cells = [fmt([r["metrics"][m] for r in mine.values()]) for m in METRICS]
        for key, digits in (("old_class_mass", 3), ("negatives_old", 1)):
            values = [v for v in (contrast_mean(r, key) for r in mine.values()) if v is not None]
            cells.append(f"{statistics.mean(values):.{digits}f}" if values else "–")
        for m in ("forgetting", "old_task"):
            seeds = sorted(set(er) & set(mine))
            if label == "er" or len(seeds) < 2:
                cells.append("")
                continue
            a, b = [mine[s]["metrics"][m] for s in seeds], [er[s]["metrics"][m] for s in seeds]
            diff = [x - y for x, y in zip(a, b)]
            p = ttest_rel(a, b).pvalue if any(diff) else 1.0
            cells.append(f"{100 * statistics.mean(diff):+5.1f} ± {100 * statistics.stdev(diff):4.1f} (p={p:.2g})")
        print(f"| {stream} | {size} | {label} | " + " | ".join(cells) + " |")

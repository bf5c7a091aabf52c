"""Where dro_replay beats er, memory by memory: paired differences over seeds from a small_buffer run.

For each stream and memory size, the mean ± sample std over seeds of er's, gcl_replay's and
dro_replay's (``update: kl``, and the ``uniform`` ablation) last accuracy, old-task accuracy (mean
over j < T of A[T][j]), forgetting and drift, and the paired difference to er over matching seeds of
forgetting and old-task accuracy with a paired t-test's p (scipy). Also each method's mean over
experiences of the old-class weight mass and of the old classes' negatives per step (record.contrast).
Then dro_replay (kl) against each baseline (er, gcl_replay, finetune), paired over seeds; and how
often er's batches held each old class (record.contrast: share of old classes never scored, and of
the steps that scored an old class that was scored at all, mean and minimum).

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
    values = [v for v in values if v is not None]  # records from before drift was measured have none
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
        cells = [fmt([r["metrics"].get(m) for r in mine.values()]) for m in METRICS]
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


def paired(mine, other, metric):
    seeds = sorted(set(mine) & set(other))
    if len(seeds) < 2:
        return "–"
    a, b = [mine[s]["metrics"][metric] for s in seeds], [other[s]["metrics"][metric] for s in seeds]
    diff = [x - y for x, y in zip(a, b)]
    p = ttest_rel(a, b).pvalue if any(diff) else 1.0
    return f"{100 * statistics.mean(diff):+5.1f} ± {100 * statistics.stdev(diff):4.1f} (p={p:.2g})"


floor = {}  # stream -> seed -> finetune record
for path in sorted((args.folder / "records").glob("*.json")):
    r = json.loads(path.read_text())
    if r.get("status") == "done" and r["method"] == "finetune":
        r["metrics"]["old_task"] = statistics.mean(r["acc_matrix"][-1][:-1])
        floor.setdefault(r["stream"], {})[r["seed"]] = r

print("\n| stream | memory | metric | dro_replay (kl) − er | − gcl_replay | − finetune (no memory) |")
print("|---|---:|---|---:|---:|---:|")
for stream, size in sorted({(s, n) for s, n, _ in runs}):
    dro = runs.get((stream, size, "dro_replay (kl)"))
    if not dro:
        continue
    for metric in ("old_task", "forgetting"):
        cells = [paired(dro, runs.get((stream, size, base), {}), metric) for base in ("er", "gcl_replay")]
        cells.append(paired(dro, floor.get(stream, {}), metric))
        print(f"| {stream} | {size} | {metric} | " + " | ".join(cells) + " |")

print("\n| stream | memory | er: old classes never scored | steps scoring an old class (mean) | (min) |")
print("|---|---:|---:|---:|---:|")
for stream, size in sorted({(s, n) for s, n, _ in runs}):
    never, shares = [], []
    for r in runs.get((stream, size, "er"), {}).values():
        taught = [set(e["classes"]) for e in r["experiences"]]
        for e in r.get("contrast") or []:
            if not e or e["old_class_mass"] is None:
                continue
            k = e["experience"]
            old = {c for j in range(k) for c in taught[j]} - taught[k]
            scored = {int(c): v["steps_scored"] / e["steps"] for c, v in e["classes"].items() if int(c) in old}
            never.append(1 - len(scored) / len(old))
            shares += list(scored.values())
    if shares:
        print(f"| {stream} | {size} | {statistics.mean(never):.1%} | {statistics.mean(shares):.1%} | {min(shares):.1%} |")

"""What recording representation drift costs, per method, from the records of a finished run.

Each record's ``cost.drift_s`` is the wall time the drift matrices took (clbench/drift.py), any extra
feature pass included; ``cost.wall_s`` the whole cell's. Prints, per method, the median over its cells
of drift seconds per step, of the share of the cell's wall time, and the largest share.

    python bench/drift_cost.py results/demo [results/small_buffer ...]
"""
import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folders", nargs="+", type=Path)
args = parser.parse_args()

rows = defaultdict(list)
for folder in args.folders:
    for path in sorted((folder / "records").glob("*.json")):
        record = json.loads(path.read_text())
        cost = record.get("cost") or {}
        if record.get("status") != "done" or cost.get("drift_s") is None or not cost.get("wall_s"):
            continue
        steps = len(record["acc_matrix"])
        rows[record["method"]].append((cost["drift_s"] / steps, cost["drift_s"] / cost["wall_s"], cost["eval_images"]))

print(f"{'method':<14} {'cells':>5} {'ms/step (median)':>17} {'share of wall (median)':>23} {'share (max)':>12}")
for method, values in sorted(rows.items()):
    per_step = statistics.median(v[0] for v in values) * 1000
    share = statistics.median(v[1] for v in values)
    print(f"{method:<14} {len(values):>5} {per_step:>17.2f} {share:>22.3%} {max(v[1] for v in values):>12.3%}")

"""One cell with 1 rank and with 2 ranks (train.devices), side by side: wall time and whether the records agree.

    python bench/ddp_wall.py [--pairs 3] [--method finetune] [--cpu-threads N]

Each run is a fresh ``clbench run`` process on the same suite (the tiny CLIP pretrained on
the synthetic world, a 3-step class-incremental stream of 12 classes, batch 32, 2 epochs,
SGD), with its own results folder and the shared-results cache off, so nothing carries
over. The settings alternate inside each pair. Printed: per setting, the median of the whole
process's wall time and of the record's ``cost.wall_s`` (the cell itself), the 2-rank / 1-rank
ratio of each (median, min–max over the pairs), and the largest difference between the two
settings' accuracy matrices and training losses.

On a machine with 2 CPU cores, 2 ranks are not expected to be faster: each rank gets one
thread, and the second rank starts a second Python process with torch. The point of a
2-rank cell here is the equal record; on N GPUs each rank encodes B/N images per step.
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

import yaml

ROOT = Path(__file__).resolve().parent.parent
SUITE = {
    "name": "ddp",
    "model": {"arch": "clbench-tiny-32", "pretrained": "tinyworld"},
    "train": {"epochs": 2, "batch_size": 32, "optimizer": "sgd", "lr": 1e-3, "weight_decay": 0.0},
    "streams": [{"dataset": "synthetic", "scenario": "class_incremental", "steps": 3, "num_classes": 12,
                 "train_per_class": 40, "test_per_class": 20, "world_domains": ["clean", "sketch"]}],
    "seeds": [0],
}


def run(folder: Path, method: str, devices: int) -> tuple[float, dict]:
    suite = json.loads(json.dumps(SUITE))
    suite["methods"] = [method]
    suite["train"]["devices"] = devices
    path = folder / f"suite-{devices}.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = folder / f"results-{devices}-{time.monotonic_ns()}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", CLBENCH_CACHE_DIR="off")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clbench.cli", "run", str(path), "--results", str(results)], check=True,
                   env=env, capture_output=True)
    wall = time.perf_counter() - start
    record = json.loads(next((results / "records").glob("*.json")).read_text())
    return wall, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--method", default="finetune")
    args = parser.parse_args()
    walls, cells, records = {1: [], 2: []}, {1: [], 2: []}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for devices in ((1, 2) if pair % 2 == 0 else (2, 1)):
                wall, record = run(Path(tmp), args.method, devices)
                assert record["status"] == "done", record.get("error")
                walls[devices].append(wall)
                cells[devices].append(record["cost"]["wall_s"])
                records[devices] = record
    print(f"{args.method}, {args.pairs} pairs, {os.cpu_count()} CPU cores")
    for devices in (1, 2):
        print(f"  {devices} rank(s): process {statistics.median(walls[devices]):.2f} s, cell {statistics.median(cells[devices]):.2f} s")
    for what, values in (("process", walls), ("cell", cells)):
        ratios = [b / a for a, b in zip(values[1], values[2])]
        print(f"  2 ranks / 1 rank, {what}: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
    one, two = records[1], records[2]
    dacc = max(abs(a - b) for r1, r2 in zip(one["acc_matrix"], two["acc_matrix"]) for a, b in zip(r1, r2) if a is not None)
    dloss = max(abs(a - b) / abs(a) for a, b in zip(one["train_loss"], two["train_loss"]) if a)
    print(f"  records: same accuracy matrix: {one['acc_matrix'] == two['acc_matrix']} (largest difference {dacc:.4f}); "
          f"largest relative training-loss difference {dloss:.1e}")


if __name__ == "__main__":
    main()

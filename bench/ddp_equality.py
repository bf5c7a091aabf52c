"""Every registered method's cell with train.devices 1 and 2, side by side: are the records equal?

    python bench/ddp_equality.py [--methods finetune,er,...]

The suite is the one tests/test_distributed_cells.py uses (the tiny CLIP pretrained on the
synthetic world, a 3-step class-incremental stream of 12 classes over two domains, an uneven batch
of 7, 2 epochs, SGD at lr 1e-3), each method with the parameters it needs on the tiny model. Two
``clbench run`` processes (1 rank, then 2 ranks through torchrun, gloo on CPU), the shared-results
cache off. Printed per method: whether the accuracy matrices are identical, the largest accuracy
difference, the largest relative difference of the per-experience training losses, and whether
the buffer, the memory record and the method's record extras agree (floats to a relative 1e-4).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_distributed_cells import MODEL, STREAM, TRAIN  # noqa: E402

#: what a method needs on the tiny model (tests/test_methods.py's NEEDS), plus CutMix on for gdumb
NEEDS = {"zscl": {"reference": {"dataset": "synthetic", "num_classes": 6, "train_per_class": 4, "test_per_class": 1}, "we_freq": 1},
         "coda_prompt": {"layers": [[0, 1]]}, "gdumb": {"cutmix_alpha": 1.0}}


def close(x, y, rtol=1e-4) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(close(x[k], y[k], rtol) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(close(a, b, rtol) for a, b in zip(x, y))
    if isinstance(x, float) and isinstance(y, (int, float)):
        return abs(x - y) <= rtol * max(1.0, abs(x))
    return x == y


def run(folder: Path, methods: list, devices: int) -> tuple[float, dict]:
    suite = {"name": f"eq{devices}", "model": MODEL, "train": {**TRAIN, "weight_decay": 0.0, "devices": devices},
             "streams": [STREAM], "methods": methods, "seeds": [0]}
    path = folder / f"eq{devices}.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = folder / f"results{devices}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clbench.cli", "run", str(path), "--results", str(results)], check=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1", CLBENCH_CACHE_DIR="off"), capture_output=True)
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (results / "records").glob("*.json"))}
    return time.perf_counter() - start, records


def main() -> None:
    from clbench.plugins import Plugins, make_plugin_manager

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(Plugins(make_plugin_manager()).methods.names()))
    args = parser.parse_args()
    names = args.methods.split(",")
    methods = [{"name": n, **NEEDS.get(n, {})} for n in names]
    with tempfile.TemporaryDirectory() as tmp:
        wall1, one = run(Path(tmp), methods, 1)
        wall2, two = run(Path(tmp), methods, 2)
    print(f"{len(names)} methods; 1 rank: {wall1:.0f} s, 2 ranks: {wall2:.0f} s (whole runs)")
    print("| method | accuracy matrix equal | max |Δacc| | max rel. Δ train loss | buffer, memory, extras equal |")
    print("|---|---|---:|---:|---|")
    for name in names:
        a, b = one[name], two.get(name, {})
        if b.get("status") != "done":
            print(f"| {name} | 2 ranks failed: {b.get('error')} | | | |")
            continue
        dacc = max(abs((p or 0) - (q or 0)) for r1, r2 in zip(a["acc_matrix"], b["acc_matrix"]) for p, q in zip(r1, r2))
        dloss = max((abs(p - q) / abs(p) for p, q in zip(a["train_loss"], b["train_loss"]) if p), default=0.0)
        extras = [k for k in ("buffer", "memory", "method_state") if not close(a.get(k), b.get(k))]
        print(f"| {name} | {a['acc_matrix'] == b['acc_matrix']} | {dacc:.4f} | {dloss:.1e} | "
              f"{'yes' if not extras else 'differ: ' + ', '.join(extras)} |")


if __name__ == "__main__":
    main()

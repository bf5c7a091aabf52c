"""A 12-cell grid on an image folder with nothing shared between cells, and with clbench's caches, side by side.

    python bench/grid_sharing.py [--images 1200] [--pairs 3] [--workers N]

The grid: er, gcl_replay and dro_replay × two replay memories × two seeds
(12 cells) on a class-incremental stream of an image folder of --images JPEGs
(bench/decode_cache.py writes them), run by ``clbench run`` in a fresh process
each time. Three settings, in rotating order, --pairs times:

  nothing shared   ``CLBENCH_CACHE_DIR=off``: every cell decodes its files on
                   every pass and computes its own Z and prompt features
                   (clbench before this change);
  shared results   a fresh cache folder with ``CLBENCH_DECODE_CACHE_GB=0``:
                   Z's image features and the class prompts' text features are
                   computed by the first cell of each seed and loaded by the
                   others (clbench/shared_results.py), files still decoded on
                   every pass;
  both             a fresh cache folder: shared results and every split
                   decoded once for the whole grid (clbench/data/decoded_cache.py).

Prints each setting's median wall time, the ratios to "nothing shared" (median,
min, max over pairs), the evaluation images the model encoded, and whether the
three settings' leaderboards agree number for number.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from decode_cache import write_jpegs  # noqa: E402

SETTINGS = ("nothing shared", "shared results", "both")


def suite(folder: Path, workers: int) -> dict:
    return {
        "name": "grid12",
        "model": {"arch": "clbench-tiny-32", "pretrained": "tinyworld"},
        "train": {"epochs": 1, "batch_size": 32, "lr": 1e-5, "weight_decay": 0.0},
        "streams": [{"name": "folder-ci5", "dataset": "imagefolder", "path": str(folder), "workers": workers,
                     "scenario": "class_incremental", "steps": 5}],
        "methods": [{"name": m, "buffer": {"size": size}} for m in ("er", "gcl_replay", "dro_replay") for size in (20, 60)],
        "seeds": [0, 1],
    }


def run_grid(suite_file: Path, out: Path, cache: str | None, decode: bool) -> tuple[float, list[dict]]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CLBENCH_CACHE_DIR=cache or "off")
    if not decode:
        env["CLBENCH_DECODE_CACHE_GB"] = "0"
    start = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("clbench")), "run", str(suite_file), "--results", str(out)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"clbench run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    return wall, records


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="decode processes per pass (imagefolder 'workers')")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="clbench-grid-"))
    try:
        folder = write_jpegs(tmp / "folder", args.images)
        suite_file = tmp / "grid.yaml"
        suite_file.write_text(yaml.safe_dump(suite(folder, args.workers)))
        walls = {s: [] for s in SETTINGS}
        evaluated, outcomes = {}, {}
        for pair in range(args.pairs):
            order = SETTINGS[pair % 3:] + SETTINGS[:pair % 3]
            for setting in order:
                out, cache = tmp / f"out-{pair}-{setting}", tmp / f"cache-{pair}-{setting}"
                wall, records = run_grid(suite_file, out, None if setting == "nothing shared" else str(cache),
                                         decode=setting == "both")
                assert len(records) == 12 and all(r["status"] == "done" for r in records), [r.get("error") for r in records]
                walls[setting].append(wall)
                evaluated[setting] = sum(r["cost"]["eval_images"] for r in records)
                outcomes[setting] = sorted((r["cell_id"], json.dumps(r["acc_matrix"]), json.dumps(r["metrics"])) for r in records)
                print(f"  pair {pair + 1} {setting:15s} {wall:7.2f}s", flush=True)
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
        base = walls["nothing shared"]
        print(f"12-cell grid, {args.images} JPEGs, {args.workers} decode workers, {args.pairs} runs per setting:")
        for setting in SETTINGS:
            ratios = [w / b for w, b in zip(walls[setting], base)]
            print(f"  {setting:15s} median {statistics.median(walls[setting]):7.2f}s (min {min(walls[setting]):.2f}, max {max(walls[setting]):.2f})"
                  f"  / nothing shared: x{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
                  f"  evaluation images encoded {evaluated[setting]:,}")
        same = len({json.dumps(o) for o in outcomes.values()}) == 1
        print(f"  accuracy matrices and metrics identical in all three settings: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Decode once: evaluation and cell time with the decoded-image cache off and on, side by side in one run.

    python bench/decode_cache.py [--images 2000] [--repeats 5] [--cells 3] [--workers N]

Writes --images JPEGs (10 classes, sizes around 400x300, smooth random content
with noise) into an image folder (train/ and test/, half each) in a temporary
folder, then measures:

(a) evaluation throughput (images/s) of one pass over the test split through the
    tiny CLIP (clbench-tiny-32, tinyworld weights, at its input size): the files
    decoded by --workers processes (cache off) against a warm cache, median of
    --repeats each in alternating order, plus the one-time cost of building the
    cache entry, and the same for the batches alone (no model);
(b) wall time of a 5-step ``finetune`` cell (run_cell) on that folder with the
    cache off and on (the first "on" cell builds the entries and is reported
    apart; medians over --cells), and whether their accuracy matrices agree.

The cache lives in the temporary folder (CLBENCH_CACHE_DIR); work shared between
cells other than decoded images (its ``shared`` folder) is emptied before every
cell, so only decoding differs.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clbench.data.decoded_cache import cached_set  # noqa: E402
from clbench.data.files import default_workers  # noqa: E402
from clbench.data.imagefolder import build_imagefolder  # noqa: E402
from clbench.models import build_clip  # noqa: E402
from clbench.plugins import Plugins, make_plugin_manager  # noqa: E402
from clbench.runner import run_cell  # noqa: E402
from clbench.suite import load_suite  # noqa: E402
from clbench.testing import write_suite  # noqa: E402

CLASSES = 10
MODEL = {"arch": "clbench-tiny-32", "pretrained": "tinyworld"}
TRAIN = {"epochs": 1, "batch_size": 64, "lr": 1e-5, "weight_decay": 0.0, "eval_batch_size": 256}


def write_jpegs(root: Path, n: int) -> Path:
    """``n`` JPEGs (quality 90) in root/{train,test}/c<k>/: an upsampled random 12x16 picture tinted per class plus noise."""
    rng = np.random.default_rng(0)
    for i in range(n):
        split, label = ("train" if i % 2 == 0 else "test"), (i // 2) % CLASSES
        w, h = int(rng.integers(360, 441)), int(rng.integers(270, 331))
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        small[..., label % 3] = np.maximum(small[..., label % 3], 40 + 20 * label)
        big = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
        big = np.clip(big + rng.integers(-12, 13, big.shape), 0, 255).astype(np.uint8)
        folder = root / split / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(big).save(folder / f"{i:06d}.jpg", quality=90)
    return root


@torch.no_grad()
def eval_pass(clip, data) -> int:
    """One pass over ``data`` through the image tower, preprocessed as the Learner does; returns images seen."""
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    seen = 0
    for images, _labels in data.batches(TRAIN["eval_batch_size"]):
        clip.model.encode_image((images.float().div_(255) - mean) / std)
        seen += len(images)
    return seen


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(values) -> str:
    return f"median {statistics.median(values):.3f}, min {min(values):.3f}, max {max(values):.3f}"


def eval_throughput(root: Path, cache: Path, repeats: int, workers: int) -> None:
    os.environ["CLBENCH_CACHE_DIR"] = str(cache)
    clip = build_clip(MODEL["arch"], MODEL["pretrained"])
    clip.model.eval()
    test = build_imagefolder(path=str(root), image_size=clip.image_size, workers=workers).test
    warm = cached_set(test)
    build_s = timed(lambda: warm.file.array())
    n = len(test)
    print(f"(a) eval pass over {n} test images at {clip.image_size}px, {workers} decode workers")
    print(f"    one-time cache build: {build_s:.2f}s ({n / build_s:,.0f} img/s decoded, {warm.file.nbytes / 1e6:.1f} MB)")
    rates = {"off": [], "warm": []}
    for i in range(repeats):
        order = ("off", "warm") if i % 2 == 0 else ("warm", "off")
        for kind in order:
            seconds = timed(lambda: eval_pass(clip, test if kind == "off" else warm))  # noqa: B023 (called at once)
            rates[kind].append(n / seconds)
    for kind in ("off", "warm"):
        print(f"    cache {kind:4s}: {statistics.median(rates[kind]):10,.0f} img/s  ({spread(rates[kind])})")
    ratios = [w / o for w, o in zip(rates["warm"], rates["off"])]
    print(f"    warm / off throughput: {statistics.median(ratios):.2f}x  (pairs: {spread(ratios)})")
    loads = {"off": [], "warm": []}  # the data path alone: batches, no model
    for i in range(repeats):
        for kind in (("off", "warm") if i % 2 == 0 else ("warm", "off")):
            data = test if kind == "off" else warm
            loads[kind].append(n / timed(lambda: sum(len(x) for x, _ in data.batches(TRAIN["eval_batch_size"]))))  # noqa: B023
    ratios = [w / o for w, o in zip(loads["warm"], loads["off"])]
    print(f"    batches alone (no model): off {statistics.median(loads['off']):,.0f} img/s, warm "
          f"{statistics.median(loads['warm']):,.0f} img/s, {statistics.median(ratios):.1f}x  (pairs: {spread(ratios)})")


def cell_times(root: Path, cache: Path, repeats: int, workers: int) -> None:
    plugins = Plugins(make_plugin_manager())
    stream = {"dataset": "imagefolder", "path": str(root), "steps": 5, "workers": workers}
    suite = {"name": "decode", "model": MODEL, "train": TRAIN, "streams": [stream], "methods": ["finetune"], "seeds": [0]}
    cell = load_suite(write_suite(cache.parent / "suite.yaml", suite), plugins).cells[0]

    def run(where: str):
        os.environ["CLBENCH_CACHE_DIR"] = where
        shutil.rmtree(cache / "shared", ignore_errors=True)
        start = time.perf_counter()
        record = run_cell(cell, plugins)
        assert record["status"] == "done", record.get("error")
        return time.perf_counter() - start, record["acc_matrix"]

    shutil.rmtree(cache, ignore_errors=True)
    cold, cold_acc = run(str(cache))
    times, matrices = {"off": [], "on": []}, []
    for i in range(repeats):
        for kind in (("off", "on") if i % 2 == 0 else ("on", "off")):
            seconds, acc = run("off" if kind == "off" else str(cache))
            times[kind].append(seconds)
            matrices.append(acc)
    print(f"(b) 5-step finetune cell ({TRAIN['epochs']} epoch, train and test images above), {workers} decode workers")
    print(f"    cache on, cold (decodes train and test once): {cold:.2f}s")
    for kind in ("off", "on"):
        print(f"    cache {kind:3s} (warm): {statistics.median(times[kind]):7.2f}s  ({spread(times[kind])})")
    ratios = [o / w for o, w in zip(times["off"], times["on"])]
    print(f"    off / on wall time: {statistics.median(ratios):.2f}x  (pairs: {spread(ratios)}); cold on / off: "
          f"{cold / statistics.median(times['off']):.2f}")
    print(f"    accuracy matrices identical across all {len(matrices) + 1} cells: {all(m == cold_acc for m in matrices)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to write (half train, half test)")
    parser.add_argument("--repeats", type=int, default=5, help="eval passes per setting")
    parser.add_argument("--cells", type=int, default=3, help="cells per setting")
    parser.add_argument("--workers", type=int, default=default_workers(), help="decode worker processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        root = write_jpegs(tmp / "folder", args.images)
        size = sum(p.stat().st_size for p in root.rglob("*.jpg"))
        print(f"wrote {args.images} JPEGs ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f}s; torch threads "
              f"{torch.get_num_threads()}, {os.cpu_count()} CPUs")
        eval_throughput(root, tmp / "cache", args.repeats, args.workers)
        cell_times(root, tmp / "cache", args.cells, args.workers)


if __name__ == "__main__":
    main()

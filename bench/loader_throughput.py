"""Data loading throughput: images/s from disk to model-ready tensors on the device.

    python bench/loader_throughput.py [--images 20000] [--repeats 5]

Writes a CIFAR-100 copy in the real pickle format (random pixels) and a small
image-folder tree to a temporary folder, then measures, side by side in one
run: building the CIFAR dataset from its pickles, iterating it in batches and
preprocessing on the device (the Learner's path), and decoding PNG files with
0 and 2 worker processes. Medians over --repeats.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.miniature import write_cifar100, write_imagefolder  # noqa: E402

from clbench.data.cifar import build_cifar100  # noqa: E402
from clbench.data.files import FileImageSet  # noqa: E402


def preprocess(images, device, mean, std):
    x = images.to(device, non_blocking=True).float().div_(255)
    return (x - mean) / std


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return n, statistics.median(times), min(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000, help="CIFAR training images to write")
    parser.add_argument("--files", type=int, default=600, help="PNG files for the folder test")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mean = torch.tensor([0.48, 0.46, 0.41], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.27, 0.26, 0.28], device=device).view(1, 3, 1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cifar100(tmp, train_per_class=args.images // 100, test_per_class=1)
        n, med, lo, hi = timed(lambda: len(build_cifar100(root=str(tmp)).train), args.repeats)
        print(f"cifar100 build from pickles : {n / med:12,.0f} img/s  (median {med:.3f}s, min {lo:.3f}, max {hi:.3f})")
        data = build_cifar100(root=str(tmp))

        def iterate():
            count = 0
            for images, _ in data.train.batches(256, shuffle=True, generator=torch.Generator().manual_seed(0)):
                preprocess(images, device, mean, std)
                count += len(images)
            return count

        n, med, lo, hi = timed(iterate, args.repeats)
        print(f"cifar100 batches to {device.type:4s}    : {n / med:12,.0f} img/s  (median {med:.3f}s, min {lo:.3f}, max {hi:.3f})")

        per_class = max(1, args.files // 10)
        root = write_imagefolder(tmp / "folder", classes=[f"c{i}" for i in range(10)], per_split=(per_class, 1))
        paths = sorted(str(p) for p in (root / "train").rglob("*.png"))
        for workers in (0, 2):
            files = FileImageSet(paths, torch.zeros(len(paths), dtype=torch.long), size=224, workers=workers)
            n, med, lo, hi = timed(lambda: sum(len(x) for x, _ in files.batches(64)), max(2, args.repeats // 2))  # noqa: B023 (called at once)
            print(f"png decode, {workers} workers     : {n / med:12,.0f} img/s  (median {med:.3f}s, min {lo:.3f}, max {hi:.3f})")


if __name__ == "__main__":
    main()

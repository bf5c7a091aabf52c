"""What the drift matrices cost at ImageNet-1K scale, beside the evaluation they ride on.

After step t the harness compares, for every experience j ≤ t, the features of j's test images now
with two stored references (clbench/drift.py). With T = 10 experiences of 5,000 test images and
512-d features (ImageNet-1K, 10 steps, ViT-B/16) this times, on one device:

- drift: ``DriftTracker.start`` plus all T steps on features already computed (what a method that
  scores from features pays), per step, median of ``--repeats`` runs (min–max);
- the evaluation row it rides on: one ViT-B/16 forward pass (torchvision's ``vit_b_16``, random
  weights, bf16 autocast on CUDA, 224 px) over T × 5,000 images, i.e. what every step's evaluation
  already costs (and what a method that scores images itself pays again for drift);

and prints their ratio and the reference features' memory.

    python bench/drift_gpu.py                      # CUDA when present
    python bench/drift_gpu.py --device cpu --per-experience 200 --repeats 2
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clbench.drift import DriftTracker  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--experiences", type=int, default=10)
parser.add_argument("--per-experience", type=int, default=5000)
parser.add_argument("--dim", type=int, default=512)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--eval-batch", type=int, default=500)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()
device = torch.device(args.device)
T, N, D = args.experiences, args.per_experience, args.dim


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


g = torch.Generator(device=device).manual_seed(0)
steps = [[torch.nn.functional.normalize(torch.randn(N, D, device=device, generator=g), dim=1) for _ in range(T)]
         for _ in range(T + 1)]  # steps[0]: the model as built; steps[t + 1]: after step t
drift_s = []
for _ in range(args.repeats):
    sync()
    began = time.perf_counter()
    tracker = DriftTracker(T)
    tracker.start(lambda j: steps[0][j])
    for t in range(T):
        tracker.step(t, lambda j, t=t: steps[t + 1][j])
    sync()
    drift_s.append((time.perf_counter() - began) / T)

from torchvision.models import vit_b_16  # noqa: E402

model = vit_b_16().to(device).eval()
images = torch.randn(args.eval_batch, 3, 224, 224, device=device)
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
passes = []
with torch.no_grad(), autocast:
    model(images)  # warm-up
    for _ in range(max(2, args.repeats // 2)):
        sync()
        began = time.perf_counter()
        for _ in range(0, N, args.eval_batch):
            model(images)
        sync()
        passes.append(time.perf_counter() - began)
per_set = statistics.median(passes)
row = per_set * T  # an evaluation row: every experience's test set

name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
print(f"device {name}; T = {T} experiences × {N} test images, {D}-d features; torch {torch.__version__}")
print(f"drift per step: {1000 * statistics.median(drift_s):.2f} ms (median of {len(drift_s)}, "
      f"{1000 * min(drift_s):.2f}–{1000 * max(drift_s):.2f})")
print(f"ViT-B/16 feature pass: {per_set:.3f} s per test set ({N / per_set:.0f} img/s), {row:.2f} s per evaluation row")
print(f"drift / evaluation row: {statistics.median(drift_s) / row:.2%}")
print(f"reference features kept: {2 * T * N * D * 4 / 2**20:.0f} MiB (two float32 copies of every test set)")

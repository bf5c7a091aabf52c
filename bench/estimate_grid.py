"""How much GPU time a suite needs: images each cell processes × measured throughput.

    python bench/estimate_grid.py suites/paper.yaml [--train-rate 1529 --replay-rate 1856 --eval-rate 5040]

Counts, per cell, the images its training and evaluation pass through the
model, from the datasets' published sizes (no data needed): training =
epochs × the experience's images, plus one replayed image per new image
(× replay_ratio) from the second experience on for replay methods, × 4/3
for iCaRL's extra forward pass through the previous model; evaluation =
every test set once before training and once after each step. The pass
before training (Z, the pretrained model's zero-shot evaluation) is the same
for every method of a stream and seed, so clbench computes it once per
machine and shares it (clbench/shared_results.py): it is counted once per
(stream, seed) here, and a `zeroshot` cell, whose later evaluations reuse
those features, costs nothing beyond it; `--no-sharing` counts it in every
cell as before, and both totals are printed. The default
rates are the ViT-B/16 images/s that bench/gpu_check.sh measured through
clbench's Learner on one H200 at batch 128 (bf16). The FLOPs line scales the
same counts by FlopCounter's forward FLOPs per image (training = 3 × forward).
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clbench.suite import load_suite  # noqa: E402

# published sizes: (train, test) per experience source
SIZES = {
    "cifar100": {"*": (50_000, 10_000)},
    "imagenet1k": {"*": (1_281_167, 50_000)},
    "imagenet100": {"*": (126_689, 5_000)},
    "domainnet": {  # cleaned version
        "clipart": (33_525, 14_604), "infograph": (36_023, 15_582), "painting": (50_416, 21_850),
        "quickdraw": (120_750, 51_750), "real": (120_906, 52_041), "sketch": (48_212, 20_916),
    },
}
DOMAINNET_ORDER = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def experiences(stream: dict) -> list[tuple[int, int]]:
    sizes = SIZES[stream["dataset"]]
    if stream["scenario"] == "domain_incremental":
        return [sizes[d] for d in (stream.get("domains") or DOMAINNET_ORDER)]
    train, test = sizes["*"]
    steps = stream["steps"]
    return [(train // steps, test // steps)] * steps


def cell_images(cell, shared_z: set | None = None) -> tuple[float, float]:
    """(training images, evaluation images) of one cell; with ``shared_z`` (the (stream, seed) pairs whose
    initial evaluation is already counted) Z is counted once per pair."""
    exps = experiences(cell.config["stream"])
    params, train = cell.config["params"], cell.config["train"]
    test_total = sum(t for _, t in exps)
    z = test_total
    if shared_z is not None:
        pair = (cell.stream_label, cell.seed)
        z = 0 if pair in shared_z else test_total
        shared_z.add(pair)
    if cell.method == "zeroshot":  # a frozen model: its test-set features are Z's
        return 0.0, z if shared_z is not None else (1 + len(exps)) * test_total
    evaluation = z + len(exps) * test_total
    replay = params.get("replay_ratio", 1.0) if "buffer" in params else 0.0
    images = sum(train["epochs"] * n * (1 + (replay if t else 0)) for t, (n, _) in enumerate(exps))
    if cell.method == "icarl":
        images *= 4 / 3
    return images, evaluation


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite")
    ap.add_argument("--train-rate", type=float, default=1529.4, help="finetune training images/s")
    ap.add_argument("--replay-rate", type=float, default=1856.2, help="replay training images/s (new + replayed)")
    ap.add_argument("--eval-rate", type=float, default=5040.4, help="evaluation images/s")
    ap.add_argument("--gflops", type=float, default=35.13, help="forward GFLOPs per image (ViT-B/16 at 224)")
    ap.add_argument("--tflops", type=float, default=989.0 * 0.2, help="sustained TFLOP/s for the FLOPs line (20%% of H200 bf16 peak)")
    ap.add_argument("--no-sharing", action="store_true", help="count Z in every cell (clbench before shared results)")
    args = ap.parse_args()
    suite = load_suite(args.suite)
    print(f"{args.suite}: {len(suite.cells)} cells")
    totals = {}
    for label, shared in (("every cell its own Z", None), ("Z shared per stream and seed", set())):
        hours = defaultdict(float)
        total_train = total_eval = 0.0
        for cell in suite.cells:
            train, evaluation = cell_images(cell, shared)
            rate = args.replay_rate if "buffer" in cell.config["params"] else args.train_rate
            hours[cell.stream_label] += (train / rate + evaluation / args.eval_rate) / 3600
            total_train += train
            total_eval += evaluation
        totals[label] = (dict(hours), total_train, total_eval)
    label = "every cell its own Z" if args.no_sharing else "Z shared per stream and seed"
    hours, total_train, total_eval = totals[label]
    print(f"  ({label})")
    for stream, h in hours.items():
        print(f"  {stream:16s} {h:8.1f} GPU-hours")
    print(f"  total            {sum(hours.values()):8.1f} GPU-hours at the measured rates "
          f"({total_train / 1e9:.2f} G training images, {total_eval / 1e9:.2f} G evaluation images)")
    before, after = (sum(totals[k][0].values()) for k in totals)
    print(f"  sharing Z saves  {before - after:8.1f} GPU-hours ({before:.1f} -> {after:.1f}, x{after / before:.3f})")
    flops = (3 * total_train + total_eval) * args.gflops * 1e9
    print(f"  FLOPs check      {flops / 1e18:8.1f} EFLOP -> {flops / (args.tflops * 1e12) / 3600:.1f} GPU-hours at {args.tflops:.0f} TFLOP/s")


if __name__ == "__main__":
    main()

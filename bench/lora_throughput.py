"""Training throughput of `finetune` with every weight trainable against LoRA adapters (`model.adapter`).

    python bench/lora_throughput.py [--runs 3] [--rank 8] [--targets c_fc,c_proj,in_proj,out_proj] [--device cpu]

The same cell (tiny CLIP, synthetic stream, contrastive loss) runs with the full model and
with LoRA on both towers, alternating which goes first; each prints train images/s as the
Learner measures it (`record["cost"]["train_img_per_s"]`: the training loop only, evaluation
excluded) and the trainable / total parameter counts from the record's manifest. The last
lines give the median of the runs and the ratio LoRA / full.

On the tiny model most parameters are the token embedding (49408 x 64), which full fine-tuning
updates with AdamW at every step and LoRA leaves frozen; how the ratio moves with model size
is best measured on a real architecture with --arch (random init, offline) and --device cuda.
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clbench.plugins import Plugins, make_plugin_manager  # noqa: E402
from clbench.runner import run_cell  # noqa: E402
from clbench.suite import load_suite  # noqa: E402
from clbench.testing import hub_offline, write_suite  # noqa: E402

STREAM = {"dataset": "synthetic", "steps": 2, "num_classes": 20, "train_per_class": 60, "test_per_class": 5,
          "world_domains": ["clean"]}


def cell_for(args, adapter: dict | None, folder: Path, plugins):
    model = {"arch": args.arch, "pretrained": None}
    if adapter:
        model["adapter"] = adapter
    suite = {"name": "lora_throughput", "model": model, "streams": [dict(STREAM)], "methods": ["finetune"], "seeds": [0],
             "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 1e-4, "device": args.device, "amp": args.amp}}
    return load_suite(write_suite(folder / f"{'lora' if adapter else 'full'}.yaml", suite), plugins).cells[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arch", default="clbench-tiny-32")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--targets", default="c_fc,c_proj,in_proj,out_proj")
    parser.add_argument("--towers", default="image,text")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    args = parser.parse_args()
    adapter = {"kind": "lora", "rank": args.rank, "alpha": args.alpha, "towers": args.towers.split(","),
               "targets": args.targets.split(",")}
    plugins = Plugins(make_plugin_manager())
    speed: dict[str, list[float]] = {"full": [], "lora": []}
    counts: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp, hub_offline():
        cells = {"full": cell_for(args, None, Path(tmp), plugins), "lora": cell_for(args, adapter, Path(tmp), plugins)}
        for run in range(args.runs):
            for name in (("full", "lora") if run % 2 == 0 else ("lora", "full")):
                record = run_cell(cells[name], plugins)
                if record["status"] != "done":
                    sys.exit(f"{name}: {record['error']}")
                facts = record["manifest"]["model"]
                counts[name] = (facts["trainable_parameters"], facts["parameters"])
                speed[name].append(record["cost"]["train_img_per_s"])
                print(f"run {run + 1} {name:4s}: {speed[name][-1]:9.1f} train img/s   "
                      f"trainable {counts[name][0]:>11,} of {counts[name][1]:,} parameters", flush=True)
    device = record["manifest"]["device"]
    print(f"\n{args.arch} on {device}, finetune, {args.epochs} epochs x {STREAM['steps']} experiences, batch {args.batch_size}; "
          f"LoRA r={args.rank} alpha={args.alpha:g} on {args.towers} / {args.targets}")
    for name in ("full", "lora"):
        share = counts[name][0] / counts[name][1]
        print(f"{name:4s}: median {statistics.median(speed[name]):9.1f} train img/s "
              f"(runs: {', '.join(f'{s:.1f}' for s in speed[name])}); trainable {counts[name][0]:,} ({share:.2%})")
    ratio = statistics.median(speed["lora"]) / statistics.median(speed["full"])
    print(f"LoRA / full: {ratio:.2f}x train images/s, {counts['lora'][0] / counts['full'][0]:.4f}x trainable parameters")


if __name__ == "__main__":
    main()

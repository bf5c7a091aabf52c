"""What a frozen-image-tower classifier costs next to zero-shot evaluation, cell by cell, in one process.

    python bench/frozen_tower_cost.py [--rounds 3] [--stream world-ci5|world-di4]

Runs the demo's stream (suites/demo.yaml) as cells of ``zeroshot``, ``simplecil``
and ``ranpac`` (projection_dim 1000, as the demo), and of ``simplecil`` scoring
images instead of cached features (``predict`` overridden, the path every test
set takes at every step without ``predict_features``), interleaved round by
round so machine load hits each alike. Prints each one's median cell wall time,
its ratio to ``zeroshot`` and the images its evaluation encoded. simplecil and
ranpac should cost about one extra pass over the training images: each test set
is encoded once per cell (the tower never changes) and scored from the cache.
It is a benchmark, not a test: timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", default="world-ci5", choices=["world-ci5", "world-di4"])
    args = parser.parse_args()

    import yaml

    from clbench import hookimpl
    from clbench.plugins import Plugins, make_plugin_manager
    from clbench.runner import run_cell
    from clbench.suite import load_suite
    from clbench_methods.simplecil import SimpleCIL

    class SimpleCILFromImages(SimpleCIL):
        name = "simplecil_images"

        def predict(self, images, classes):
            return self.predict_features(self.learner.encode_images(images), classes)

    class Extra:
        @hookimpl
        def clbench_add_methods(self, register):
            register(SimpleCILFromImages)

    plugins = Plugins(make_plugin_manager())
    plugins.pm.register(Extra())
    demo = yaml.safe_load((ROOT / "suites" / "demo.yaml").read_text())
    suite = {"name": "frozen-tower-cost", "model": demo["model"], "train": demo["train"],
             "streams": [s for s in demo["streams"] if s["name"] == args.stream],
             "methods": ["zeroshot", "simplecil", {"name": "ranpac", "projection_dim": 1000}, "simplecil_images"],
             "seeds": [0]}
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "clbench-frozen-tower-cost.yaml"
    path.write_text(yaml.safe_dump(suite))
    cells = load_suite(path, plugins).cells
    walls: dict[str, list[float]] = {c.variant: [] for c in cells}
    encoded: dict[str, int] = {}
    for _ in range(args.rounds):
        for cell in cells:
            record = run_cell(cell, plugins)
            walls[cell.variant].append(record["cost"]["wall_s"])
            encoded[cell.variant] = record["cost"]["eval_images"]
    base = statistics.median(walls[cells[0].variant])
    print(f"stream {args.stream}, {args.rounds} rounds; cell wall time median (min–max), ratio to zeroshot, images encoded by evaluation")
    for variant, times in walls.items():
        median = statistics.median(times)
        print(f"  {variant:32s} {median:6.2f} s ({min(times):.2f}–{max(times):.2f})  {median / base:5.2f}×  {encoded[variant]}")


if __name__ == "__main__":
    sys.exit(main())

"""Figures from records: accuracy on the seen classes after each step, one line per method."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np


def seen_accuracy_curve(record: dict) -> list[float]:
    """Sample-weighted accuracy over experiences 0..t after step t, for each t."""
    sizes = [e["test_size"] for e in record["experiences"]]
    A = record["acc_matrix"]
    return [sum(A[t][j] * sizes[j] for j in range(t + 1)) / sum(sizes[: t + 1]) for t in range(len(A))]


def plot_accuracy_curves(records: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("status") == "done":
            curves[r["stream"]][r["variant"]].append(seen_accuracy_curve(r))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stream, by_variant in sorted(curves.items()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for variant, runs in sorted(by_variant.items()):
            runs = np.array(runs) * 100
            steps = np.arange(1, runs.shape[1] + 1)
            mean, std = runs.mean(0), runs.std(0)
            ax.plot(steps, mean, marker="o", label=f"{variant} (n={len(runs)})")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set(xlabel="step", ylabel="accuracy on seen classes (%)", title=stream)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"accuracy_{stream}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths

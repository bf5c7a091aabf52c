"""Figures from records, as PNG and PDF: accuracy after each step, the buffer-size figure, accuracy-matrix heatmaps."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .aggregate import dedupe
from .metrics import seen_accuracy


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seen_accuracy_curve(record: dict) -> list[float]:
    """Sample-weighted accuracy over experiences 0..t after step t, for each t."""
    sizes = [e["test_size"] for e in record["experiences"]]
    return [seen_accuracy(row, sizes, t) for t, row in enumerate(record["acc_matrix"])]


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    return paths


def buffer_amount(record: dict):
    """(kind, value) of a replay record's buffer setting, e.g. ('fraction', 0.02); None without a buffer."""
    spec = (record.get("config", {}).get("params") or {}).get("buffer")
    if not isinstance(spec, dict):
        return None
    for kind in ("fraction", "per_class", "size"):
        if spec.get(kind) is not None:
            return kind, spec[kind]
    return None


def plot_accuracy_curves(records, out_dir: Path, plt) -> list[Path]:
    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        curves[r["stream"]][r["variant"]].append(seen_accuracy_curve(r))
    paths = []
    for stream, by_variant in sorted(curves.items()):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for variant, runs in by_variant.items():
            runs = np.array(runs) * 100
            steps = np.arange(1, runs.shape[1] + 1)
            mean, std = runs.mean(0), runs.std(0)
            ax.plot(steps, mean, marker="o", label=f"{variant} (n={len(runs)})")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
        ax.set(xlabel="step", ylabel="accuracy on test data seen so far (%)", title=stream)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths += _save(fig, out_dir, f"accuracy_{stream}")
        plt.close(fig)
    return paths


def plot_buffer_sweep(records, out_dir: Path, plt) -> list[Path]:
    """Last accuracy and forgetting against buffer size, one line per method, one figure per stream."""
    points: dict[str, dict[str, dict[float, list[dict]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    kinds = set()
    for r in records:
        amount = buffer_amount(r)
        if amount:
            kinds.add(amount[0])
            points[r["stream"]][r["method"]][amount[1]].append(r["metrics"])
    paths = []
    for stream, by_method in sorted(points.items()):
        if max(len(v) for v in by_method.values()) < 2:
            continue  # one buffer size: nothing to sweep
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
        for method, by_amount in sorted(by_method.items()):
            xs = sorted(by_amount)
            for ax, metric in zip(axes, ("last", "forgetting")):
                vals = [[m[metric] for m in by_amount[x] if m.get(metric) is not None] for x in xs]
                mean = [100 * np.mean(v) if v else np.nan for v in vals]
                std = [100 * np.std(v) if v else np.nan for v in vals]
                ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=method)
        label = " / ".join(sorted(kinds))
        ticks = sorted({x for by_amount in by_method.values() for x in by_amount})
        for ax, metric in zip(axes, ("last accuracy (%)", "forgetting (%)")):
            ax.set(xlabel=f"buffer ({label})", ylabel=metric, xscale="log")
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(stream)
        fig.tight_layout()
        paths += _save(fig, out_dir, f"buffer_{stream}")
        plt.close(fig)
    return paths


def plot_heatmaps(records, out_dir: Path, plt) -> list[Path]:
    folder = out_dir / "heatmaps"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in records:
        A = np.array(r["acc_matrix"], dtype=float) * 100  # None (not scored) becomes NaN: a blank cell
        fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(A), 1.0 + 0.4 * len(A)))
        im = ax.imshow(A, vmin=0, vmax=100, cmap="viridis")
        if len(A) <= 12:
            for (t, j), v in np.ndenumerate(A):
                if np.isnan(v):
                    continue
                ax.text(j, t, f"{v:.0f}", ha="center", va="center", fontsize=6, color="white" if v < 60 else "black")
        ax.set(xlabel="test set of experience", ylabel="after step", title=f"{r['variant']}\n{r['stream']}, seed {r['seed']}")
        ax.title.set_fontsize(7)
        ax.set_xticks(range(len(A)), range(1, len(A) + 1))
        ax.set_yticks(range(len(A)), range(1, len(A) + 1))
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        path = folder / f"{r['cell_id']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_all(records: list[dict], out_dir: Path, heatmaps: bool = True) -> list[Path]:
    """Every figure for the finished records; returns the files written."""
    records, _ = dedupe(records)
    if not records:
        return []
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = plot_accuracy_curves(records, out_dir, plt) + plot_buffer_sweep(records, out_dir, plt)
    if heatmaps:
        paths += plot_heatmaps(records, out_dir, plt)
    return paths

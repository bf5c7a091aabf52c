"""Figures from records, as PNG and PDF: accuracy after each step, the buffer-size figure, the mechanism figure
(forgetting and representation drift against replay memory), accuracy-matrix heatmaps."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .aggregate import dedupe
from .metrics import seen_accuracy
from .sweep_lines import MEMORY_LABEL, buffer_amount, buffer_lines, exemplars, mean_std, metric_of, sweep_points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def has_matrix(record: dict) -> bool:
    """Whether the record holds an accuracy matrix to draw (a failed record holds ``[]`` or null)."""
    A = record.get("acc_matrix")
    return bool(A) and len(record.get("experiences") or []) == len(A)


def seen_accuracy_curve(record: dict) -> list[float]:
    """Sample-weighted accuracy over experiences 0..t after step t, for each t (fractions; [] without a matrix)."""
    if not has_matrix(record):
        return []
    sizes = [e["test_size"] for e in record["experiences"]]
    return [seen_accuracy(row, sizes, t) for t, row in enumerate(record["acc_matrix"])]


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    return paths


def _n_label(counts) -> str:
    lo, hi = min(counts), max(counts)
    return f"n={lo}" if lo == hi else f"n={lo}–{hi}"


def _style(i: int) -> dict:
    """The i-th line's colour and marker: a new marker after every ten colours, so no two lines look alike."""
    return {"color": f"C{i % 10}", "marker": "osD^v"[i // 10 % 5]}


def _short(label: str, width: int = 48) -> str:
    """A legend label cut to ``width`` characters (with "…"): a long variant (zscl's reference options) would widen the figure."""
    return label if len(label) <= width else label[: width - 1] + "…"


def _figure_legend(fig, handles, labels, ncol: int = 3) -> None:
    """One legend for the figure's panels, below them, so it covers no line."""
    fig.legend(handles, labels, loc="outside lower center", ncol=min(ncol, len(labels)), fontsize=7, frameon=False)


def plot_accuracy_curves(records, out_dir: Path, plt) -> list[Path]:
    """Accuracy on the test data seen so far (%) after each step, one figure ``accuracy_<stream>`` per stream, one
    line per variant (mean ± sample std over seeds); records without an accuracy matrix (failed) are left out."""
    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    untrained = set()
    for r in records:
        if has_matrix(r):
            curves[r["stream"]][r["variant"]].append(seen_accuracy_curve(r))
            if r["method"] == "zeroshot":
                untrained.add(r["variant"])
    paths = []
    for stream, by_variant in sorted(curves.items()):
        # the legend goes below the panel (as in the other figures), so many variants never hide the lines
        fig, ax = plt.subplots(figsize=(8, 4.2 + 0.18 * ((len(by_variant) + 1) // 2)), layout="constrained")
        # the legend lists the variants best first (by the mean of their last point), so it reads as the ranking
        ranked = sorted(by_variant.items(), key=lambda item: (-float(np.mean([run[-1] for run in item[1]])), item[0]))
        shorts = [_short(v) for v, _ in ranked]
        labels = {v: (s if shorts.count(s) == 1 else v) for (v, _), s in zip(ranked, shorts)}  # cut only where it stays unique
        for i, (variant, runs) in enumerate(ranked):
            runs = np.array(runs) * 100
            steps = np.arange(1, runs.shape[1] + 1)
            mean, std = runs.mean(0), runs.std(0, ddof=1) if len(runs) > 1 else np.zeros(runs.shape[1])  # sample std, as the leaderboard
            # the untrained model, the line every training method is read against: black and dashed
            style = {"color": "black", "linestyle": "--", "marker": "x"} if variant in untrained else _style(i)
            ax.plot(steps, mean, label=f"{labels[variant]} (n={len(runs)})", markersize=4, **style)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.1, color=style["color"])
        ax.set(xlabel="step", ylabel="accuracy on test data seen so far (%)", title=stream)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _figure_legend(fig, *ax.get_legend_handles_labels(), ncol=2)
        paths += _save(fig, out_dir, f"accuracy_{stream}")
        plt.close(fig)
    return paths


def _set_log_x(ax, ticks, xlabel: str) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    if len(ticks) == 1:  # a log axis around one point
        ax.set_xlim(ticks[0] / 2, ticks[0] * 2)


def plot_buffer_sweep(records, out_dir: Path, plt) -> list[Path]:
    """Last accuracy and forgetting (%) against the buffer setting, one figure ``buffer_<stream>`` per stream.

    One line per method variant with its buffer setting removed (:func:`buffer_lines`), so variants that
    differ in anything else (``update=kl``, ``update=uniform``) stay apart; mean ± std over seeds at each x.
    x: :func:`sweep_x` (the rule's value, or exemplars at the end when a stream mixes kinds of rule), log
    scale. Only streams where some line has two x values or more get a figure. Returns the files written.
    """
    paths = []
    for stream, xlabel, points in sweep_points(records):
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.6 + 0.18 * ((len(points) + 2) // 3)), layout="constrained")
        handles, labels = [], []
        for i, (label, by_x) in enumerate(points.items()):
            if not by_x:
                continue
            xs = sorted(by_x)
            for ax, metric in zip(axes, ("last", "forgetting")):
                stats = [mean_std([metric_of(r, metric) for r in by_x[x]]) for x in xs]
                mean, std = [100 * m for m, _ in stats], [100 * d for _, d in stats]
                line = ax.errorbar(xs, mean, yerr=std, capsize=3, **_style(i))
            handles.append(line)
            labels.append(f"{label} ({_n_label([len(by_x[x]) for x in xs])})")
        ticks = sorted({x for by_x in points.values() for x in by_x})
        for ax, ylabel in zip(axes, ("last accuracy (%)", "forgetting (%)")):
            ax.set_ylabel(ylabel)
            _set_log_x(ax, ticks, xlabel)
        _figure_legend(fig, handles, labels)
        fig.suptitle(stream)
        paths += _save(fig, out_dir, f"buffer_{stream}")
        plt.close(fig)
    return paths


MECHANISM_METRICS = (("forgetting", "forgetting (%)"), ("drift", "drift (×100, 1 − cosine)"))


def plot_mechanism(records, out_dir: Path, plt) -> list[Path]:
    """Forgetting (%) and representation drift (×100) against replay memory, one figure ``mechanism_<stream>`` per stream.

    x: the record's ``buffer.exemplars`` at the end of its run (log scale, ticks at the values present).
    One line per method variant with its buffer setting removed (:func:`buffer_lines`): mean over the
    seeds at each memory size with a ± sample-std band, n (records per point) in the legend. Records of
    the stream without a buffer setting (finetune, zeroshot) are a dashed horizontal line at their mean,
    a light ± sample-std band, labelled with their variant. A record whose metric is None (an older
    record without drift, one step) is left out of that panel. Only streams where some line has two
    memory sizes or more, and some record with drift, get a figure. Returns the files written (PNG and PDF).
    """
    paths = []
    for stream, lines in sorted(buffer_lines(records).items()):
        points = {label: defaultdict(list) for label in lines}
        for label, rs in lines.items():
            for r in rs:
                if exemplars(r):
                    points[label][exemplars(r)].append(r)
        points = {label: by_x for label, by_x in points.items() if by_x}
        if max((len(p) for p in points.values()), default=0) < 2:
            continue
        if not any(metric_of(r, "drift") is not None for by_x in points.values() for rs in by_x.values() for r in rs):
            continue  # records from before drift was measured: the buffer figure already shows forgetting
        baselines = defaultdict(list)
        for r in records:
            if r["stream"] == stream and not buffer_amount(r):
                baselines[r["variant"]].append(r)
        ticks = sorted({x for by_x in points.values() for x in by_x})
        n_entries = len(points) + len(baselines)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6 + 0.18 * ((n_entries + 2) // 3)), layout="constrained")
        handles, labels = [], []
        for i, (label, by_x) in enumerate(points.items()):
            xs = sorted(by_x)
            style = _style(i)
            for ax, (metric, _) in zip(axes, MECHANISM_METRICS):
                stats = [mean_std([metric_of(r, metric) for r in by_x[x]]) for x in xs]
                keep = [k for k, (m, _) in enumerate(stats) if m == m]
                x = np.array(xs, dtype=float)[keep]
                mean = np.array([stats[k][0] for k in keep]) * 100
                std = np.array([stats[k][1] for k in keep]) * 100
                (line,) = ax.plot(x, mean, marker=style["marker"], color=style["color"], markersize=4)
                ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.15, linewidth=0)
            handles.append(line)
            labels.append(f"{label} ({_n_label([len(by_x[x]) for x in xs])})")
        for j, (variant, rs) in enumerate(sorted(baselines.items())):
            color = _style(len(points) + j)["color"]
            drawn = None
            for ax, (metric, _) in zip(axes, MECHANISM_METRICS):
                mean, std = mean_std([metric_of(r, metric) for r in rs])
                if mean != mean:
                    continue
                drawn = ax.axhline(100 * mean, color=color, linestyle="--", linewidth=1.2)
                if std > 0:
                    ax.axhspan(100 * (mean - std), 100 * (mean + std), color=color, alpha=0.08, linewidth=0)
            if drawn is not None:
                handles.append(drawn)
                labels.append(f"{variant} (no buffer, n={len(rs)})")
        for ax, (_, ylabel) in zip(axes, MECHANISM_METRICS):
            ax.set_ylabel(ylabel)
            _set_log_x(ax, ticks, MEMORY_LABEL)
        _figure_legend(fig, handles, labels)
        fig.suptitle(f"{stream}: forgetting and representation drift against replay memory", fontsize=10)
        paths += _save(fig, out_dir, f"mechanism_{stream}")
        plt.close(fig)
    return paths


def plot_heatmaps(records, out_dir: Path, plt) -> list[Path]:
    """One PNG per record, ``heatmaps/<cell_id>.png``: its accuracy matrix in % (row t: after step t; column j:
    experience j's test set; blank where not scored); records without a matrix (failed) get none."""
    folder = out_dir / "heatmaps"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in records:
        if not r.get("acc_matrix"):
            continue  # a failed record: no matrix
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
    """Every figure for the finished records (accuracy curves, buffer sweep, mechanism figure, and with ``heatmaps``
    one accuracy heatmap per record) under ``out_dir`` (made if missing); returns the files written, [] without
    done, current records."""
    records, _ = dedupe(records)
    if not records:
        return []
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = plot_accuracy_curves(records, out_dir, plt) + plot_buffer_sweep(records, out_dir, plt) + plot_mechanism(records, out_dir, plt)
    if heatmaps:
        paths += plot_heatmaps(records, out_dir, plt)
    return paths

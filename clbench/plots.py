"""Figures from records, as PNG and PDF: accuracy after each step, the buffer-size figure, the mechanism figure
(forgetting and representation drift against replay memory), accuracy-matrix heatmaps."""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from .aggregate import dedupe
from .metrics import seen_accuracy

MEMORY_LABEL = "memory (exemplars at the end)"
_HASH = re.compile(r" #[0-9a-f]{6}$")  # the suffix aggregate.tidy adds where one label covers several configs


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


def buffer_amount(record: dict):
    """(kind, value) of a replay record's buffer setting, e.g. ('fraction', 0.02); None without a buffer."""
    spec = ((record.get("config") or {}).get("params") or {}).get("buffer")
    if not isinstance(spec, dict):
        return None
    for kind in ("fraction", "per_class", "size"):
        if spec.get(kind) is not None:
            return kind, spec[kind]
    return None


def exemplars(record: dict):
    """The record's replay memory at the end of its run, in exemplars (``buffer.exemplars``); None when unknown or 0."""
    n = (record.get("buffer") or {}).get("exemplars")
    return n if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 else None


def _split_items(inner: str) -> list[str]:
    """``inner`` split at the ", " that are not inside brackets (a value may be a list or a mapping)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and inner.startswith(", ", i):
            items.append(inner[start:i])
            start = i + 2
    return items + [inner[start:]]


def without_buffer(variant: str) -> str:
    """The variant label with its buffer setting taken out, so a sweep's labels name one line.

    Labels are ``name (key=value, ...)`` as suites write them (clbench/suite.py), a nested key as
    ``buffer.per_class=1``: every item ``buffer.…=…`` or ``buffer=…`` goes, and the parentheses with the
    last one. ``"dro_replay (buffer.per_class=1, update=kl)"`` → ``"dro_replay (update=kl)"``,
    ``"er (buffer.per_class=1)"`` → ``"er"``. Anything after the closing parenthesis (``" [order …]"``)
    is kept; a label without a buffer item, without parentheses or with unbalanced ones comes back as it is.
    """
    start = variant.find(" (")
    if start < 0:
        return variant
    depth = 0
    for end in range(start + 1, len(variant)):
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(variant[end], 0)
        if depth == 0:
            break
    else:
        return variant
    items = _split_items(variant[start + 2:end])
    kept = [item for item in items if not re.match(r"buffer[.=]", item)]
    if len(kept) == len(items):
        return variant
    return variant[:start] + (f" ({', '.join(kept)})" if kept else "") + variant[end + 1:]


def buffer_lines(records) -> dict[str, dict[str, list[dict]]]:
    """stream -> line label -> records: the records with a buffer setting, one line per method variant.

    A line is the records whose configs are the same but for the seed, the stream, the buffer setting and
    ``train.devices`` (clbench/memo.py's curves), so variants that differ in anything else (``update=kl``,
    ``update=uniform``) stay apart whatever their labels say. Its label is the records' variant label with
    the buffer setting removed (:func:`without_buffer`, and a ``#hash`` suffix from aggregate.tidy
    dropped) when they agree on it, else the method name; ``label #<config hash>`` where two lines of
    a stream would get the same label. Records without a buffer setting are left out.
    """
    from .memo import _curve_key

    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if buffer_amount(r):
            groups[r["stream"]][_curve_key(r)].append(r)
    out: dict[str, dict[str, list[dict]]] = {}
    for stream, by_key in groups.items():
        named = []
        for key, rs in by_key.items():
            labels = {without_buffer(_HASH.sub("", r["variant"])) for r in rs}
            named.append((labels.pop() if len(labels) == 1 else rs[0]["method"], key, rs))
        count = defaultdict(int)
        for label, _, _ in named:
            count[label] += 1
        out[stream] = {(label if count[label] == 1 else f"{label} #{key}"): rs for label, key, rs in sorted(named, key=lambda n: n[:2])}
    return out


def sweep_x(records) -> tuple[str, dict[int, float]]:
    """The x axis of a stream's buffer sweep: (axis label, id(record) -> x).

    x is the buffer rule's value (``fraction``, ``per_class`` or ``size``) when the stream's records
    share one kind of rule, else (kinds mixed: their values are not on one scale) the record's
    ``buffer.exemplars`` at the end. Records without a usable x (no rule; no exemplars) are left out.
    """
    amounts = {id(r): buffer_amount(r) for r in records}
    kinds = {a[0] for a in amounts.values() if a}
    if len(kinds) == 1:
        return f"buffer ({kinds.pop()})", {i: a[1] for i, a in amounts.items() if a and a[1] and a[1] > 0}
    return MEMORY_LABEL, {id(r): exemplars(r) for r in records if amounts[id(r)] and exemplars(r)}


def _metric(record: dict, metric: str):
    value = (record.get("metrics") or {}).get(metric)
    return None if value is None or value != value else float(value)


def mean_std(values) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1, 0 for one value) of ``values``; (nan, nan) when empty."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _n_label(counts) -> str:
    lo, hi = min(counts), max(counts)
    return f"n={lo}" if lo == hi else f"n={lo}–{hi}"


def _style(i: int) -> dict:
    """The i-th line's colour and marker: a new marker after every ten colours, so no two lines look alike."""
    return {"color": f"C{i % 10}", "marker": "osD^v"[i // 10 % 5]}


def _figure_legend(fig, handles, labels) -> None:
    """One legend for the figure's panels, below them, so it covers no line."""
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=7, frameon=False)


def plot_accuracy_curves(records, out_dir: Path, plt) -> list[Path]:
    """Accuracy on the test data seen so far (%) after each step, one figure ``accuracy_<stream>`` per stream, one
    line per variant (mean ± population std over seeds); records without an accuracy matrix (failed) are left out."""
    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if has_matrix(r):
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
    for stream, lines in sorted(buffer_lines(records).items()):
        xlabel, x_of = sweep_x([r for rs in lines.values() for r in rs])
        points = {label: defaultdict(list) for label in lines}
        for label, rs in lines.items():
            for r in rs:
                if id(r) in x_of:
                    points[label][x_of[id(r)]].append(r)
        if max((len(p) for p in points.values()), default=0) < 2:
            continue  # one buffer size: nothing to sweep
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.6 + 0.18 * ((len(points) + 2) // 3)), layout="constrained")
        handles, labels = [], []
        for i, (label, by_x) in enumerate(points.items()):
            if not by_x:
                continue
            xs = sorted(by_x)
            for ax, metric in zip(axes, ("last", "forgetting")):
                vals = [[_metric(r, metric) for r in by_x[x]] for x in xs]
                mean = [100 * np.mean([v for v in vs if v is not None]) if any(v is not None for v in vs) else np.nan for vs in vals]
                std = [100 * np.std([v for v in vs if v is not None]) if any(v is not None for v in vs) else np.nan for vs in vals]
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
    memory sizes or more get a figure. Returns the files written (PNG and PDF).
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
                stats = [mean_std([_metric(r, metric) for r in by_x[x]]) for x in xs]
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
                mean, std = mean_std([_metric(r, metric) for r in rs])
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

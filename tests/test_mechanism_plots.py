"""The mechanism figure (forgetting and drift against replay memory), the buffer sweep's lines, and the HTML report's
drift panels, on hand-written records (no training)."""
import html
import json
import math

import pytest

from clbench import plots, sweep_lines
from clbench.api import write_report
from clbench.metrics import METRICS
from clbench.results import RESULTS_VERSION

SINCE_LEARNED = [[1.0, None], [0.9, 1.0]]
SINCE_INITIAL = [[0.99, None], [0.95, 0.97]]
CONTRAST = [{"experience": 0, "steps": 3, "old_class_mass": None, "negatives_old": None, "negatives_new": 6.0, "classes": {"0": {"images": 2.0}}},
            {"experience": 1, "steps": 4, "old_class_mass": 0.25, "negatives_old": 7.5, "negatives_new": 6.0, "classes": {"0": {"images": 1.0}}}]


def rec(cell_id, method, variant, seed=0, stream="s", buffer=None, exemplars=0, forgetting=0.2, drift=0.05, params=None):
    """A done record: ``buffer`` is the rule ({"per_class": 1}), ``exemplars`` the buffer's size at the end."""
    metrics = {m: 0.5 for m in METRICS}
    metrics.update(forgetting=forgetting, drift=drift)
    return {
        "cell_id": cell_id, "status": "done", "method": method, "variant": variant, "stream": stream, "seed": seed,
        "config": {"method": method, "seed": seed, "results_version": RESULTS_VERSION, "stream": {"name": stream},
                   "params": {**(params or {}), **({"buffer": buffer} if buffer else {})}},
        "class_order_hash": "h", "acc_matrix": [[0.8, 0.1], [0.6, 0.9]], "experiences": [{"test_size": 10}, {"test_size": 10}],
        "metrics": metrics, "buffer": {"exemplars": exemplars, "bytes": 100 * exemplars},
        "drift": {"since_learned": SINCE_LEARNED, "since_initial": SINCE_INITIAL}, "contrast": CONTRAST,
        "cost": {}, "manifest": {"created": "2026-01-01T00:00:00"},
    }


def dro(update, per_class, seed=0, **kw):
    return rec(f"dro-{update}-{per_class}-{seed}", "dro_replay", f"dro_replay (buffer.per_class={per_class}, update={update})", seed=seed,
               buffer={"per_class": per_class}, exemplars=10 * per_class, params={"update": update}, **kw)


def finetune(seed, forgetting, drift):
    return rec(f"ft-{seed}", "finetune", "finetune (loss=ce)", seed=seed, params={"loss": "ce"}, forgetting=forgetting, drift=drift)


class KeepFigures:
    """pyplot, except that ``close`` keeps the figure for the test to read."""

    def __init__(self):
        self.plt = plots._pyplot()
        self.figures = []

    def __getattr__(self, name):
        return getattr(self.plt, name)

    def close(self, fig):
        self.figures.append(fig)


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def solid_lines(ax) -> list:
    """The plotted lines of ``ax`` in drawing order (not an error bar's caps, not a dashed baseline)."""
    return [line for line in ax.lines if line.get_linestyle() == "-"]


@pytest.fixture
def keep():
    k = KeepFigures()
    yield k
    for fig in k.figures:
        k.plt.close(fig)


@pytest.mark.parametrize("label, expected", [
    ("dro_replay (buffer.per_class=1, update=kl)", "dro_replay (update=kl)"),
    ("er (buffer.per_class=1)", "er"),
    ("er (buffer.fraction=0.02, buffer.policy=reservoir, replay_ratio=0.5)", "er (replay_ratio=0.5)"),
    ("gcl_replay (alpha=0.1, buffer.size=200)", "gcl_replay (alpha=0.1)"),
    ("er (buffer={'size': 8, 'policy': 'x, y'}, lr=[0.1, 0.2])", "er (lr=[0.1, 0.2])"),  # commas inside brackets are no separators
    ("er (buffer.size=8) [order 1a2b3c]", "er [order 1a2b3c]"),  # a suffix after the parentheses stays
    ("finetune (loss=ce)", "finetune (loss=ce)"),
    ("zeroshot", "zeroshot"),
    ("x (buffers=3)", "x (buffers=3)"),  # another key that merely starts with 'buffer'
    ("er (buffer.size=8", "er (buffer.size=8"),  # unbalanced: as it is
])
def test_without_buffer(label, expected):
    assert sweep_lines.without_buffer(label) == expected


def test_mean_std_is_the_sample_std():
    assert sweep_lines.mean_std([0.2, 0.4]) == pytest.approx((0.3, math.sqrt(0.02)))
    assert sweep_lines.mean_std([0.5, None]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in sweep_lines.mean_std([None]))


def test_mechanism_figure_needs_two_memory_sizes(tmp_path):
    one = [dro("kl", 1, seed=s) for s in (0, 1)] + [finetune(0, 0.5, 0.1)]
    names = {p.name for p in plots.plot_all(one, tmp_path / "one", heatmaps=False)}
    assert not any(n.startswith(("mechanism_", "buffer_")) for n in names) and "accuracy_s.png" in names
    two = one + [dro("kl", 2, seed=s) for s in (0, 1)]
    names = {p.name for p in plots.plot_all(two, tmp_path / "two", heatmaps=False)}
    assert {"mechanism_s.png", "mechanism_s.pdf", "buffer_s.png", "buffer_s.pdf"} <= names
    assert (tmp_path / "two" / "mechanism_s.pdf").read_bytes()[:4] == b"%PDF"
    older = [dro("kl", size, seed=s, drift=None) for size in (1, 2) for s in (0, 1)]  # records from before drift
    names = {p.name for p in plots.plot_all(older, tmp_path / "older", heatmaps=False)}
    assert "buffer_s.png" in names and not any(n.startswith("mechanism_") for n in names)


def test_mechanism_figure_lines_bands_and_baseline(tmp_path, keep):
    records = [dro("kl", 1, seed=0, forgetting=0.2, drift=0.04), dro("kl", 1, seed=1, forgetting=0.4, drift=0.06),
               dro("kl", 5, seed=0, forgetting=0.1, drift=None), dro("kl", 5, seed=1, forgetting=0.1, drift=None),  # older records: no drift
               dro("uniform", 1, forgetting=0.3), dro("uniform", 5, forgetting=0.15),
               finetune(0, 0.5, 0.1), finetune(1, 0.7, 0.3)]
    [png, pdf] = plots.plot_mechanism(records, tmp_path, keep)
    assert png.name == "mechanism_s.png" and pdf.exists()
    [fig] = keep.figures
    assert legend_texts(fig) == ["dro_replay (update=kl) (n=2)", "dro_replay (update=uniform) (n=1)", "finetune (loss=ce) (no buffer, n=2)"]
    forgetting, drift = fig.axes[:2]
    assert forgetting.get_xlabel() == drift.get_xlabel() == "memory (exemplars at the end)" and forgetting.get_xscale() == "log"
    assert [t.get_text() for t in forgetting.get_xticklabels()] == ["10", "50"]  # ticks at the exemplar counts present
    kl = forgetting.lines[0]
    assert list(kl.get_xdata()) == [10, 50] and list(kl.get_ydata()) == pytest.approx([30.0, 10.0])  # mean over seeds, %
    band = forgetting.collections[0].get_paths()[0].vertices[:, 1]  # the ± sample-std band around the kl line
    assert band.max() == pytest.approx(30 + 100 * math.sqrt(0.02)) and band.min() == pytest.approx(10.0)
    assert list(drift.lines[0].get_xdata()) == [10] and list(drift.lines[0].get_ydata()) == pytest.approx([5.0])  # drift None: left out
    dashed = [line for line in forgetting.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == pytest.approx([60.0, 60.0])  # finetune's mean, across the axis


def test_sweep_keeps_variants_that_differ_beyond_the_buffer_apart(tmp_path, keep):
    records = [dro(u, k, seed=s, forgetting=f + 0.01 * s) for u, f in (("kl", 0.1), ("uniform", 0.3)) for k in (1, 2) for s in (0, 1)]
    plots.plot_buffer_sweep(records, tmp_path, keep)
    [fig] = keep.figures
    assert legend_texts(fig) == ["dro_replay (update=kl) (n=2)", "dro_replay (update=uniform) (n=2)"]
    left, right = fig.axes[:2]
    assert left.get_xlabel() == "buffer (per_class)" and [t.get_text() for t in right.get_xticklabels()] == ["1", "2"]
    kl, uniform = solid_lines(right)
    assert list(kl.get_ydata()) == pytest.approx([10.5, 10.5]) and list(uniform.get_ydata()) == pytest.approx([30.5, 30.5])


def test_sweep_with_mixed_kinds_of_rule_is_against_exemplars(tmp_path, keep):
    er = [rec(f"er{k}", "er", f"er (buffer.size={k})", buffer={"size": k}, exemplars=k) for k in (20, 80)]
    gcl = [rec(f"g{f}", "gcl_replay", f"gcl_replay (buffer.fraction={f})", buffer={"fraction": f}, exemplars=int(1000 * f)) for f in (0.01, 0.04)]
    plots.plot_buffer_sweep(er + gcl, tmp_path, keep)
    [fig] = keep.figures
    assert legend_texts(fig) == ["er (n=1)", "gcl_replay (n=1)"]
    assert fig.axes[0].get_xlabel() == "memory (exemplars at the end)"
    assert [list(line.get_xdata()) for line in solid_lines(fig.axes[0])] == [[20, 80], [10, 40]]


def test_lines_of_one_label_but_other_configs_get_their_hash():
    a = dro("kl", 1)
    b = dict(dro("kl", 2), cell_id="other")
    b["config"] = dict(b["config"], train={"lr": 0.5})
    lines = plots.buffer_lines([a, b])["s"]
    assert len(lines) == 2 and all(label.startswith("dro_replay (update=kl) #") for label in lines)


# --- the HTML report -------------------------------------------------------------------------------------------------

ODD = 'er "q" <b>'


def data_block(text: str) -> dict:
    tag = '<script type="application/json" id="report-data">'
    start = text.index(tag) + len(tag)
    return json.loads(text[start:text.index("</script>", start)])


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("mech")
    (root / "records").mkdir()
    records = [dro(u, k, seed=s, forgetting=0.1 * k, drift=0.01 * k) for u in ("kl", "uniform") for k in (1, 2) for s in (0, 1)]
    records += [finetune(0, 0.5, 0.1), finetune(1, 0.7, 0.3)]
    records += [rec(f"odd{k}", "er", f"{ODD} (buffer.per_class={k})", buffer={"per_class": k}, exemplars=10 * k) for k in (1, 2)]
    failed = dict(finetune(2, 0.5, 0.1), cell_id="failed", status="failed", acc_matrix=[], metrics={m: None for m in METRICS}, drift=None, contrast=None)
    del failed["experiences"]
    done_without_matrix = dict(failed, cell_id="empty", status="done", acc_matrix=None)  # no matrix, though 'done'
    for r in records + [failed, done_without_matrix]:
        (root / "records" / f"{r['cell_id']}.json").write_text(json.dumps(r))
    out = write_report(root, root / "report.html")
    text = out.read_text(encoding="utf-8")
    return text, data_block(text)


def test_report_sweep_has_drift_beside_forgetting_and_keeps_variants_apart(page):
    text, data = page
    [fig] = data["sweeps"]
    axes = {t["yaxis"]: fig["layout"][t["yaxis"].replace("y", "yaxis")]["title"]["text"] for t in fig["data"]}
    assert sorted(axes.values()) == ["drift (×100, 1 − cosine)", "forgetting (%)", "last accuracy (%)"]
    drift = {t["meta"]: t for t in fig["data"] if axes[t["yaxis"]].startswith("drift")}
    assert set(drift) == {"dro_replay (update=kl)", "dro_replay (update=uniform)", html.escape(ODD, quote=False), "finetune (loss=ce) (no buffer)"}
    assert drift["dro_replay (update=kl)"]["x"] == [1, 2] and drift["dro_replay (update=kl)"]["y"] == [1.0, 2.0]  # ×100, mean over seeds
    assert drift["finetune (loss=ce) (no buffer)"]["y"] == [20.0, 20.0] and drift["finetune (loss=ce) (no buffer)"]["line"]["dash"] == "dash"
    assert all("<" not in t["name"] for t in fig["data"]) and ODD not in text  # escaped for Plotly and the page


def test_report_cell_has_its_drift_matrices_and_contrast_summary(page):
    _, data = page
    cell = next(c for c in data["cells"] if c["id"] == "dro-kl-1-0")
    assert cell["drift"] == {"since_learned": SINCE_LEARNED, "since_initial": SINCE_INITIAL}
    assert cell["contrast"] == [{k: v for k, v in c.items() if k != "classes"} for c in CONTRAST]  # the per-class detail stays out
    empty = next(c for c in data["cells"] if c["id"] == "empty")
    assert empty["acc"] == [] and empty["drift"] is None and empty["contrast"] is None
    assert "failed" not in {c["id"] for c in data["cells"]}


def test_report_page_has_the_drift_panels(page):
    text, _ = page
    assert 'id="drift-learned"' in text and 'id="drift-initial"' in text and 'id="cell-contrast"' in text and "function showMechanism" in text


def test_accuracy_figure_ranks_its_legend_dashes_zeroshot_and_keeps_cut_labels_unique(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long_a = "zscl (reference.dataset=synthetic, reference.num_classes=70, we_freq=2)"
    long_b = "zscl (reference.dataset=synthetic, reference.num_classes=70, we_freq=3)"
    records = [rec("z", "zeroshot", "zeroshot"), rec("a", "zscl", long_a), rec("b", "zscl", long_b),
               rec("c", "er", "er (buffer.fraction=0.05, a very long note that must be cut here)")]
    records[0]["acc_matrix"] = [[0.5, 0.1], [0.4, 0.3]]  # last point (0.4·10 + 0.3·10)/20 = 0.35: ranked last
    records[1]["acc_matrix"] = [[0.9, 0.1], [0.9, 0.9]]  # 0.9: first
    seen = {}
    real_close = plt.close
    plt.close = lambda fig: seen.setdefault("ax", fig.axes[0]) and real_close(fig)
    try:
        plots.plot_accuracy_curves(records, tmp_path, plt)
    finally:
        plt.close = real_close
    lines = seen["ax"].get_lines()
    labels = [line.get_label() for line in lines]
    assert labels[0] == f"{long_a} (n=1)" and labels[-1] == "zeroshot (n=1)"  # best first, full: cutting would merge a and b
    assert f"{long_b} (n=1)" in labels
    assert "er (buffer.fraction=0.05, a very long note that…  (n=1)".replace("  ", " ") in labels  # unique once cut: cut
    assert lines[-1].get_linestyle() == "--" and lines[-1].get_color() == "black"

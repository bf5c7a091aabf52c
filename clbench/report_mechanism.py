"""The HTML report's mechanism panels (clbench/report_html.py): the buffer-size sweep with drift beside
forgetting, and one cell's drift matrices and contrastive-objective summary.

- **Sweep**, per stream where some line has two buffer settings or more: last accuracy, forgetting and
  (where any record has it) drift, against the buffer setting, one line per method variant with its
  buffer setting removed (sweep_lines.buffer_lines; x as sweep_lines.sweep_x), mean ± std over seeds; records of the
  stream without a buffer (finetune, zeroshot) as dashed horizontal lines at their mean.
- **One cell**: ``drift`` (its ``since_learned`` and ``since_initial`` matrices) and the per-experience
  summary of ``contrast`` (steps, old_class_mass, negatives_old, negatives_new; the per-class detail is
  left out of the page, it can be large), drawn by :data:`CELL_JS`.

Strings are escaped as report_html does: Plotly's through ``_p``, the table's in the browser by ``esc``.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .sweep_lines import buffer_amount, mean_std, metric_of, sweep_points

SWEEP_METRICS = (("last", "last accuracy (%)"), ("forgetting", "forgetting (%)"), ("drift", "drift (×100, 1 − cosine)"))
CONTRAST_KEYS = ("experience", "steps", "old_class_mass", "negatives_old", "negatives_new")


def _clean(values):
    return [None if v is None or v != v else round(float(v), 4) for v in values]


def sweep_figures(records, p, named, marker) -> list[dict]:
    """Plotly figures (``{"title", "data", "layout"}``) of the buffer-size sweep, one per stream that has one.

    ``p``, ``named`` and ``marker`` are report_html's string escaping, trace naming and trace style.
    Panels: last accuracy, forgetting, and drift when some record of the stream has it (every metric
    ×100); mean ± sample std over the seeds at each x, as the PNG sweep (plots.plot_buffer_sweep).
    """
    figs = []
    for stream, xlabel, points in sweep_points(records):
        present = [r for by_x in points.values() for rs in by_x.values() for r in rs]
        metrics = [(m, t) for m, t in SWEEP_METRICS if m != "drift" or any(metric_of(r, m) is not None for r in present)]
        data = []
        for i, (label, by_x) in enumerate(points.items()):
            xs = sorted(by_x)
            for k, (metric, _) in enumerate(metrics):
                vals = [[v for v in (metric_of(r, metric) for r in by_x[x]) if v is not None] for x in xs]
                data.append({"type": "scatter", "mode": "lines+markers", **named(label), "legendgroup": p(label), "showlegend": k == 0,
                             "x": xs, "y": _clean([100 * np.mean(v) if v else None for v in vals]),
                             "error_y": {"type": "data", "array": _clean([100 * mean_std(v)[1] if v else None for v in vals])},
                             "customdata": [len(v) for v in vals], "xaxis": f"x{k + 1 if k else ''}", "yaxis": f"y{k + 1 if k else ''}",
                             **marker(i), "hovertemplate": f"%{{x}}: %{{y:.1f}} {metric} (n=%{{customdata}})<extra>%{{meta}}</extra>"})
        ticks = sorted({x for by_x in points.values() for x in by_x})
        baselines = defaultdict(list)
        for r in records:
            if r["stream"] == stream and not buffer_amount(r):
                baselines[r["variant"]].append(r)
        for j, (variant, rs) in enumerate(baselines.items()):
            style = marker(len(points) + j)
            for k, (metric, _) in enumerate(metrics):
                mean, std = mean_std([metric_of(r, metric) for r in rs])
                if mean != mean:
                    continue
                data.append({"type": "scatter", "mode": "lines", **named(f"{variant} (no buffer)"), "legendgroup": p(variant),
                             "showlegend": k == 0, "x": [ticks[0], ticks[-1]], "y": _clean([100 * mean] * 2), "line": {**style["line"], "dash": "dash"},
                             "xaxis": f"x{k + 1 if k else ''}", "yaxis": f"y{k + 1 if k else ''}",
                             "hovertemplate": f"{100 * mean:.1f} ± {100 * std:.1f} {metric} (n={len(rs)}, sample std)<extra>%{{meta}}</extra>"})
        layout = {"title": {"text": p(stream)}, "grid": {"rows": 1, "columns": len(metrics), "pattern": "independent"},
                  "legend": {"orientation": "h", "y": -0.22}}
        for k, (_, title) in enumerate(metrics):
            suffix = str(k + 1) if k else ""
            layout[f"xaxis{suffix}"] = {"title": {"text": p(xlabel)}, "type": "log", "tickvals": ticks, "ticktext": [f"{x:g}" for x in ticks]}
            layout[f"yaxis{suffix}"] = {"title": {"text": p(title)}}
        figs.append({"title": stream, "data": data, "layout": layout})
    return figs


def _matrix(rows):
    """A drift matrix as JSON-safe rows (None kept), or None when it is not a non-empty list of lists."""
    if not isinstance(rows, list) or not rows or not all(isinstance(row, list) for row in rows):
        return None
    return [_clean(row) for row in rows]


def cell_mechanism(record: dict) -> dict:
    """A cell's ``drift`` (``{"since_learned", "since_initial"}``: T × T cosine similarities, None above the
    diagonal; None when the record has none) and ``contrast`` (per experience the summary of CONTRAST_KEYS;
    None where the record has none), for the page's cell picker."""
    drift = record.get("drift")
    matrices = None
    if isinstance(drift, dict):
        matrices = {k: _matrix(drift.get(k)) for k in ("since_learned", "since_initial")}
        if not any(matrices.values()):
            matrices = None
    contrast = record.get("contrast")
    rows = None
    if isinstance(contrast, list) and any(isinstance(c, dict) for c in contrast):
        rows = [None if not isinstance(c, dict) else {k: c.get(k) for k in CONTRAST_KEYS} for c in contrast]
    return {"drift": matrices, "contrast": rows}


CELL_HTML = """<div class="cols"><div class="fig half" id="drift-learned"></div><div class="fig half" id="drift-initial"></div></div>
<p class="note" id="drift-note"></p><div id="cell-contrast"></div>"""

CSS = ".fig.half{height:400px}#cell-contrast td,#cell-contrast th{text-align:right}#cell-contrast td:first-child{min-width:0}"

#: the cell picker's drift heatmaps and contrast table; ``showMechanism(c)`` is called with the picked cell
CELL_JS = r"""
function showMechanism(c) {
  const note = document.getElementById('drift-note');
  for (const [id, key, what] of [['drift-learned', 'since_learned', 'since learned'], ['drift-initial', 'since_initial', 'since the model as built']]) {
    const div = document.getElementById(id);
    const S = c.drift ? c.drift[key] : null;
    if (!S) { Plotly.purge(div); div.style.display = 'none'; continue; }
    div.style.display = '';
    const z = S.map(row => row.map(v => v === null ? null : 100 * (1 - v)));
    const n = z.length, ticks = Array.from({length: n}, (_, k) => k + 1);
    Plotly.react(div, [{type: 'heatmap', z: z, x: ticks, y: ticks, customdata: S, colorscale: 'YlOrRd', reversescale: true, zmin: 0,
      text: z.map(row => row.map(v => v === null ? '' : v.toFixed(1))), texttemplate: n <= 12 ? '%{text}' : '',
      hovertemplate: 'after step %{y}, test set %{x}: drift %{z:.2f} (cosine %{customdata:.4f})<extra></extra>'}],
      {title: {text: 'drift ' + what + ' (×100)', x: 0.02, xanchor: 'left'}, margin: {t: 50},
       xaxis: {title: {text: 'test set of experience'}, dtick: 1}, yaxis: {title: {text: 'after step'}, autorange: 'reversed', dtick: 1}}, CONFIG);
  }
  note.textContent = c.drift ? "Drift = 100 × (1 − mean cosine similarity) of an experience's test-image features after step t and after the step that learned it (left; the metric 'drift' is the mean of the last row left of the diagonal) or under the model as built (right)."
                             : 'This cell has no drift matrices (a record from before clbench kept them, or a resumed run that lost them).';
  const box = document.getElementById('cell-contrast');
  const rows = (c.contrast || []).filter(r => r);
  if (!rows.length) { box.innerHTML = ''; return; }
  const fmt = v => v === null || v === undefined ? '–' : (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : esc(v));
  const keys = ['experience', 'steps', 'old_class_mass', 'negatives_old', 'negatives_new'];
  box.innerHTML = '<h3>contrastive objective per experience</h3><table><thead><tr>' + keys.map(k => '<th>' + esc(k) + '</th>').join('') +
    '</tr></thead><tbody>' + rows.map(r => '<tr>' + keys.map(k => '<td>' + (k === 'experience' && typeof r[k] === 'number' ? r[k] + 1 : fmt(r[k])) + '</td>').join('') + '</tr>').join('') +
    '</tbody></table><p class="note">steps: training steps of the experience; old_class_mass: mean share of the objective\'s weight on classes seen before it (– in a domain-incremental stream or the first experience); negatives_old / negatives_new: mean over the old / the new classes of the negatives each was scored against per step (clbench/contrast_stats.py).</p>';
}
"""

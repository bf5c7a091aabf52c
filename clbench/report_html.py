"""One self-contained HTML page per results folder (``clbench report``): look, sort, hover, compare, send.

The page holds the leaderboard (the very cells ``clbench table`` prints, sortable by any column),
accuracy after each step per method and stream, the buffer-size sweep (last accuracy, forgetting and
drift; clbench/report_mechanism.py), accuracy against total memory with each method's area under that
curve (clbench/memo.py), any cell's accuracy-matrix heatmap with its drift matrices, contrastive-objective
summary, config, cost and manifest, and the list of records it was built from. Plotly draws the figures;
its script is embedded, so the file opens from disk with no network. Every name is escaped: HTML text
with ``html.escape``, the JSON data block with ``<``, ``>``, ``&`` as ``\\u`` escapes, and strings that
Plotly renders (it reads a few HTML tags) as HTML entities.
"""
from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import report_mechanism as mechanism
from .aggregate import dedupe, tidy
from .leaderboard import DEFINITIONS, Leaderboard
from .memo import curves as memo_curves
from .metrics import HIGHER_IS_BETTER, METRICS
from .plots import has_matrix, seen_accuracy_curve

MEMO_METRICS = ("last", "avg_inc")  # MEMO's AUC-L and AUC-A
FILE = "_report_file"  # the key write_report adds to each record it reads: the file it came from


def _p(text) -> str:
    """A string as Plotly shows it literally (Plotly reads <b>, <br>, entities: escape them)."""
    return html.escape(str(text), quote=False)


def _named(label: str, width: int = 42) -> dict:
    """A trace's legend name (long labels cut, so the plot keeps its width) and its full label for hovering."""
    short = label if len(label) <= width else label[: width - 1] + "…"
    return {"name": _p(short), "meta": _p(label)}


def _json(obj) -> str:
    """JSON safe inside a <script> element whatever the strings hold."""
    text = json.dumps(obj, default=str, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _clean(values):
    return [None if v is None or v != v else round(float(v), 4) for v in values]


def _step_figures(records) -> list[dict]:
    curves = defaultdict(lambda: defaultdict(list))
    for r in records:
        if has_matrix(r):  # a record without its matrix (failed) has no curve
            curves[r["stream"]][r["variant"]].append(seen_accuracy_curve(r))
    figs = []
    for stream, by_variant in curves.items():
        data = []
        for i, (variant, runs) in enumerate(by_variant.items()):
            runs = np.array(runs, dtype=float) * 100
            steps = list(range(1, runs.shape[1] + 1))
            data.append({"type": "scatter", "mode": "lines+markers", **_named(f"{variant} (n={len(runs)})"), "x": steps,
                         "y": _clean(runs.mean(0)), "error_y": {"type": "data", "array": _clean(runs.std(0, ddof=1) if len(runs) > 1 else 0 * runs[0]), "visible": True, "thickness": 1}, **_marker(i),
                         "hovertemplate": "step %{x}: %{y:.1f}%<extra>%{meta}</extra>"})
        figs.append({"title": stream, "data": data, "layout": {
            "title": {"text": _p(stream)}, "xaxis": {"title": {"text": "step"}, "dtick": 1},
            "yaxis": {"title": {"text": "accuracy on test data seen so far (%)"}}, "hovermode": "closest"}})
    return figs


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x")


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _marker(i: int) -> dict:
    """The i-th trace's colour and marker: a new marker shape after every ten colours, so no two traces look alike."""
    return {"marker": {"color": _color(i), "symbol": SYMBOLS[i // len(PALETTE) % len(SYMBOLS)], "size": 7}, "line": {"color": _color(i)}}


def _memo_sections(records) -> list[dict]:
    """Per stream: a figure of last accuracy against total memory, and a table of areas (last and avg_inc)."""
    by_metric = {m: memo_curves(records, m) for m in MEMO_METRICS}
    sections = []
    for stream, result in by_metric["last"].items():
        data = []
        for i, c in enumerate(result.curves):
            data.append({"type": "scatter", "mode": "lines+markers", **_named(c.label), "x": _clean(c.memory),
                         "y": _clean([100 * a for a in c.accuracy]), **_marker(i),
                         "customdata": c.seeds, "hovertemplate": "%{x:.3f} MB: %{y:.1f}% (n=%{customdata})<extra>%{meta}</extra>"})
        shapes = []
        if result.range:
            shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": result.range[0], "x1": result.range[1], "y0": 0, "y1": 1,
                           "fillcolor": "#888", "opacity": 0.12, "line": {"width": 0}})
        rows = []
        for c in result.curves:
            row = {"label": c.label, "points": len(c.memory), "memory": f"{c.memory[0]:.3f}" + (f" – {c.memory[-1]:.3f}" if len(c.memory) > 1 else "")}
            for m in MEMO_METRICS:
                other = next((o for o in by_metric[m].get(stream, result).curves if o.label == c.label), None)
                row[m] = None if other is None or other.area is None else 100 * other.area
            row["why"] = c.why + ("; " if c.why and c.buffer_only else "") + (
                f"{c.buffer_only} of its records have no 'memory' field (older clbench): buffer bytes only, rerun them for the full count"
                if c.buffer_only else "")
            rows.append(row)
        rng = by_metric["last"][stream].range
        sections.append({"title": stream, "range": rng, "notes": result.notes, "rows": rows, "figure": {"title": stream, "data": data, "layout": {
            "title": {"text": _p(stream)}, "shapes": shapes, "xaxis": {"title": {"text": "total memory beyond the model (MB)"}, "zeroline": False},
            "updatemenus": [{"type": "buttons", "direction": "right", "x": 0, "y": 1.12, "xanchor": "left", "buttons": [
                {"label": "linear memory", "method": "relayout", "args": [{"xaxis.type": "linear"}]},
                {"label": "log memory (hides 0 MB)", "method": "relayout", "args": [{"xaxis.type": "log"}]}]}],
            "yaxis": {"title": {"text": "last accuracy (%)"}}}}})
    return sections


def _cells(records) -> list[dict]:
    return [{"id": r["cell_id"], "variant": r["variant"], "stream": r["stream"], "seed": r["seed"], "file": r.get(FILE, ""),
             "acc": r.get("acc_matrix") or [], "config": r.get("config"), "cost": r.get("cost"), "manifest": r.get("manifest"),
             "buffer": r.get("buffer"), "memory": r.get("memory"), "metrics": r.get("metrics"), **mechanism.cell_mechanism(r)} for r in records]


def _leaderboard_html(board: Leaderboard) -> str:
    e = html.escape
    head = ['<th data-kind="text">method</th>'] + [
        f'<th data-kind="num" data-higher="{int(HIGHER_IS_BETTER[m])}" title="{e(DEFINITIONS[m])}">{e(s)} · {e(m)} {"↑" if HIGHER_IS_BETTER[m] else "↓"}</th>'
        for s, m in board.columns()]
    rows = []
    for v in board.variants():
        tds = [f'<td data-v="{e(v)}">{e(v)}</td>']
        for s, m in board.columns():
            entry = board.entry(v, s, m)
            mean = "" if entry is None else repr(float(entry["mean"]))
            text = e(board.fmt(entry) + board.comparison(v, s, m))
            tds.append(f'<td data-v="{mean}">{"<b>" + text + "</b>" if entry is not None and entry["best"] else text}</td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="wide"><table id="leaderboard" class="sortable"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            f'<p class="note">{e(board.footnote())} Click a column header to sort (again to reverse).</p>')


def _memo_html(sections) -> str:
    e = html.escape
    out = []
    for i, s in enumerate(sections):
        rng = (f"areas over {s['range'][0]:.3f} – {s['range'][1]:.3f} MB (shaded), the memory range the most swept curves share"
               if s["range"] else "no common memory range: no areas")
        rows = "".join(
            f"<tr><td>{e(r['label'])}</td><td>{r['points']}</td><td>{e(r['memory'])}</td>"
            + "".join(f'<td>{"–" if r[m] is None else f"{r[m]:.1f}"}</td>' for m in MEMO_METRICS)
            + f"<td>{e(r['why'])}</td></tr>" for r in s["rows"])
        notes = "".join(f'<p class="note">{e(n)}</p>' for n in s["notes"])
        out.append(f'<h3>{e(s["title"])}</h3><div class="fig" id="memo-{i}"></div><p class="note">{e(rng)}.</p>{notes}'
                   '<div class="scroll"><table class="memo"><thead><tr><th>method</th><th>points</th><th>memory (MB)</th><th>area, last (%)</th>'
                   f'<th>area, avg_inc (%)</th><th>notes</th></tr></thead><tbody>{rows}</tbody></table></div>')
    return "".join(out) or '<p class="note">No records.</p>'


def _records_html(cells) -> str:
    e = html.escape
    rows = "".join(f"<tr><td><code>{e(c['id'])}</code></td><td>{e(c['variant'])}</td><td>{e(c['stream'])}</td><td>{e(str(c['seed']))}</td>"
                   f"<td><code>{e(c['file'])}</code></td></tr>" for c in cells)
    return f'<div class="scroll"><table id="records"><thead><tr><th>cell</th><th>method</th><th>stream</th><th>seed</th><th>file</th></tr></thead><tbody>{rows}</tbody></table></div>'


def _figs_html(prefix: str, figs) -> str:
    return "".join(f'<div class="fig" id="{prefix}-{i}"></div>' for i in range(len(figs))) or '<p class="note">Nothing to show.</p>'


def render(records: list[dict], board: Leaderboard, sources: list[str]) -> str:
    """The page for ``records`` (every record read, each with its file under ``FILE``; the done, current ones are shown) and their leaderboard."""
    from importlib.resources import files as package_files

    from . import __version__

    shown, _ = dedupe(records)
    shown = [r for r in shown if r.get("status") == "done"]
    labels = tidy(shown).iloc[::len(METRICS)]  # the leaderboard's row and stream labels, one row per record in order
    shown = [dict(r, variant=v, stream=s) for r, v, s in zip(shown, labels["variant"], labels["stream"])]
    streams, variants = {s: i for i, s in enumerate(board.streams())}, {v: i for i, v in enumerate(board.variants())}
    shown.sort(key=lambda r: (streams.get(r["stream"], len(streams)), variants.get(r["variant"], len(variants)), r["seed"]))  # the table's order
    steps, sweeps, memo = _step_figures(shown), mechanism.sweep_figures(shown, _p, _named, _marker), _memo_sections(shown)
    cells = _cells(shown)
    data = {"steps": steps, "sweeps": sweeps, "memo": [s["figure"] for s in memo], "cells": cells}
    plotly_js = (package_files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    e = html.escape
    skipped = len(records) - len(shown)
    body = f"""<h1>clbench report</h1>
<p class="note">Built by clbench {e(__version__)} from {len(shown)} records in {e(", ".join(sources))}{f"; {skipped} other records (failed, running, duplicate or from an older clbench) are left out" if skipped else ""}.
Sections: <a href="#s-board">leaderboard</a> · <a href="#s-steps">accuracy after each step</a> · <a href="#s-sweep">buffer-size sweep</a> ·
<a href="#s-memo">accuracy against memory</a> · <a href="#s-cell">one cell</a> · <a href="#s-records">records</a></p>
<h2 id="s-board">Leaderboard</h2>{_leaderboard_html(board)}
<h2 id="s-steps">Accuracy after each step</h2><p class="note">Accuracy on the test data seen so far after each step, mean ± std over seeds (hover for values; click a legend entry to hide it).</p>{_figs_html("steps", steps)}
<h2 id="s-sweep">Buffer-size sweep</h2><p class="note">Last accuracy, forgetting and representation drift (×100: 1 − cosine similarity of old experiences' test-image features now and right after they were learned) against buffer size, mean ± std over seeds, one line per method variant (its buffer setting left out of the name); x is the buffer rule's value, or the exemplars kept at the end where a stream mixes kinds of rule. Dashed: methods without a buffer, at their mean. Only streams where a method ran at two buffer sizes or more.</p>{_figs_html("sweeps", sweeps)}
<h2 id="s-memo">Accuracy against total memory (MEMO)</h2><p class="note">Memory = the record's buffer bytes + every other kind the method keeps beyond the shared model (teacher copies, Fisher, stored outputs, prototypes, prompts, adapters), in MB (10<sup>6</sup> bytes), mean over seeds; one point per buffer setting.
Area: trapezoidal rule over the shaded range, the one the most curves with two points or more share, divided by its width, so it reads as a mean accuracy there (Zhou et al., ICLR 2023, "A Model or 603 Exemplars"; docs/report.md).</p>{_memo_html(memo)}
<h2 id="s-cell">One cell: accuracy matrix, drift, config, cost, manifest</h2><select id="cell-pick"></select><div class="fig" id="heatmap"></div>{mechanism.CELL_HTML}
<div class="cols"><div><h3>config</h3><pre id="cell-config"></pre></div><div><h3>cost, buffer, memory, metrics</h3><pre id="cell-cost"></pre><h3>manifest</h3><pre id="cell-manifest"></pre></div></div>
<h2 id="s-records">Records</h2>{_records_html(cells)}"""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>clbench report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}{mechanism.CSS}</style>
<script>{plotly_js}</script>
</head><body>
{body}
<script type="application/json" id="report-data">{_json(data)}</script>
<script>{JS}{mechanism.CELL_JS}</script>
</body></html>
"""


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}td{white-space:nowrap}td:first-child{white-space:normal;overflow-wrap:anywhere;min-width:14em;max-width:28em}
th:first-child,td:first-child{text-align:left}table.sortable th{cursor:pointer;background:#f4f4f4;user-select:none}
table.sortable th.asc::after{content:" ▲"}table.sortable th.desc::after{content:" ▼"}tbody tr:hover{background:#f7f7ff}
.note{color:#555;font-size:13px}.fig{width:100%;height:460px}pre{background:#f6f6f6;padding:.5em;font-size:12px;max-height:400px;overflow:auto}
.cols{display:flex;gap:1em}.wide{overflow:auto;max-height:560px}.scroll{overflow-x:auto}.wide th{position:sticky;top:0;z-index:1}table.memo td:last-child,table.memo th:last-child{text-align:left}.cols>div{flex:1;min-width:0}#records td,#records th{text-align:left}select{font-size:14px;max-width:100%}"""

JS = r"""
const DATA = JSON.parse(document.getElementById('report-data').textContent);
const esc = s => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const CONFIG = {responsive: true, displaylogo: false};
for (const key of ['steps', 'sweeps', 'memo']) {
  DATA[key].forEach((fig, i) => Plotly.newPlot(key + '-' + i, fig.data, Object.assign({margin: {t: 40}}, fig.layout), CONFIG));
}
// sortable leaderboard: numbers by their mean (data-v), empty cells last; best first on the first click
document.querySelectorAll('table.sortable').forEach(table => {
  table.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
    const numeric = th.dataset.kind === 'num';
    const first = numeric ? (th.dataset.higher === '1' ? 'desc' : 'asc') : 'asc';
    const dir = th.classList.contains(first) ? (first === 'asc' ? 'desc' : 'asc') : first;
    table.querySelectorAll('th').forEach(h => h.classList.remove('asc', 'desc'));
    th.classList.add(dir);
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const key = r => r.cells[col].dataset.v;
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (numeric) {
        if (x === '' || y === '') return (x === '') - (y === '');
        return dir === 'asc' ? x - y : y - x;
      }
      return dir === 'asc' ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.forEach(r => body.appendChild(r));
  }));
});
// one cell: heatmap of its accuracy matrix, its config, cost and manifest
const pick = document.getElementById('cell-pick');
DATA.cells.forEach((c, i) => {
  const o = document.createElement('option');
  o.value = i; o.textContent = c.variant + ' | ' + c.stream + ' | seed ' + c.seed + ' (' + c.id + ')';
  pick.appendChild(o);
});
function showCell(i) {
  const c = DATA.cells[i];
  if (!c) return;
  const z = c.acc.map(row => row.map(v => v === null ? null : 100 * v));
  const n = z.length, ticks = Array.from({length: n}, (_, k) => k + 1);
  Plotly.react('heatmap', [{type: 'heatmap', z: z, x: ticks, y: ticks, zmin: 0, zmax: 100, colorscale: 'Viridis',
    text: z.map(row => row.map(v => v === null ? '' : v.toFixed(0))), texttemplate: n <= 12 ? '%{text}' : '',
    hovertemplate: 'after step %{y}, test set %{x}: %{z:.1f}%<extra></extra>'}],
    {title: {text: esc(c.variant) + '<br>' + esc(c.stream) + ', seed ' + esc(c.seed)}, margin: {t: 60},
     xaxis: {title: {text: 'test set of experience'}, dtick: 1}, yaxis: {title: {text: 'after step'}, autorange: 'reversed', dtick: 1}}, CONFIG);
  document.getElementById('cell-config').textContent = JSON.stringify(c.config, null, 1);
  document.getElementById('cell-cost').textContent = JSON.stringify({file: c.file, cost: c.cost, buffer: c.buffer, memory: c.memory, metrics: c.metrics}, null, 1);
  document.getElementById('cell-manifest').textContent = JSON.stringify(c.manifest, null, 1);
  showMechanism(c);
}
pick.addEventListener('change', () => showCell(pick.value));
showCell(0);
"""


def check_output(out: Path) -> None:
    """UserError naming ``out`` when the page cannot be written there (checked before any work)."""
    import os

    from .errors import UserError

    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{out}: cannot write here: " + (f"{parent} is a file, not a folder" if parent.exists() else f"folder {parent} does not exist"))
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"{out}: cannot write here: permission denied")


def write_report(records_by_dir: dict[Path, list[dict]], board: Leaderboard, out: Path) -> Path:
    """Write the page for the records read from each folder to ``out`` (atomically); returns ``out``."""
    from .results import atomic_write_text

    # each record carries its own file: a cell whose copies lie in several folders (failed in one, done in
    # another) names the copy the page shows
    records = [dict(r, **{FILE: str(Path(d) / "records" / f"{r.get('cell_id')}.json")}) for d, rs in records_by_dir.items() for r in rs]
    text = render(records, board, [str(Path(d)) for d in records_by_dir])
    atomic_write_text(Path(out), text)
    return Path(out)

"""Leaderboard: records -> mean ± std over seeds -> CSV, Markdown and LaTeX.

Rows are method variants, columns are stream × metric. Records are grouped by
their full configuration minus the seed, so runs that differ in anything but
the seed (another learning rate, a changed class order) are never averaged
together: such groups get distinct row labels.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .metrics import HIGHER_IS_BETTER, METRICS

DEFAULT_METRICS = ("last", "avg_inc", "forgetting")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:6]


def _method_key(record: dict) -> str:
    """What makes a row: the config minus the seed and the stream."""
    return _hash({k: v for k, v in record["config"].items() if k not in ("seed", "stream")})


def _stream_key(record: dict) -> str:
    return _hash(record["config"].get("stream"))


def _labels(done: list[dict], label_key: str, config_key) -> dict[str, str]:
    """cell_id -> label, with '#hash' added where one label covers several configs."""
    keys: dict[str, set[str]] = {}
    for r in done:
        keys.setdefault(r[label_key], set()).add(config_key(r))
    return {
        r["cell_id"]: r[label_key] if len(keys[r[label_key]]) == 1 else f"{r[label_key]} #{config_key(r)}" for r in done
    }


def tidy(records: list[dict]) -> pd.DataFrame:
    """One row per done record and metric."""
    done = [r for r in records if r.get("status") == "done"]
    variants = _labels(done, "variant", _method_key)
    streams = _labels(done, "stream", _stream_key)
    rows = [
        {
            "method": r["method"], "variant": variants[r["cell_id"]], "stream": streams[r["cell_id"]], "metric": metric,
            "seed": r["seed"], "cell_id": r["cell_id"], "value": r["metrics"].get(metric),
        }
        for r in done
        for metric in METRICS
    ]
    columns = ["method", "variant", "stream", "metric", "seed", "cell_id", "value"]
    return pd.DataFrame(rows, columns=columns)


def aggregate(cells: pd.DataFrame) -> pd.DataFrame:
    """mean, std (ddof=1; 0 for one seed), n per (variant, stream, metric), and whether it is the column's best."""
    cells = cells.dropna(subset=["value"])
    grouped = cells.groupby(["variant", "stream", "metric"], sort=False)["value"]
    agg = grouped.agg(mean="mean", std="std", n="count").reset_index()
    agg["std"] = agg["std"].fillna(0.0)
    agg["best"] = False
    for (stream, metric), col in agg.groupby(["stream", "metric"]):
        target = col["mean"].max() if HIGHER_IS_BETTER[metric] else col["mean"].min()
        agg.loc[col.index, "best"] = (col["mean"] - target).abs() < 1e-12
    return agg


@dataclass
class Leaderboard:
    cells: pd.DataFrame
    table: pd.DataFrame  # aggregate rows
    metrics: tuple[str, ...]
    source: str  # where the records came from, for the footnote
    n_records: int

    @classmethod
    def from_records(cls, records: list[dict], metrics=DEFAULT_METRICS, source: str = "", order=None) -> "Leaderboard":
        """Rows and columns follow ``order`` (cell ids, e.g. a suite's), else the order records were created."""
        if order is not None:
            rank = {cid: i for i, cid in enumerate(order)}
            records = sorted(records, key=lambda r: (rank.get(r.get("cell_id"), len(rank)), r.get("cell_id", "")))
        else:
            records = sorted(records, key=lambda r: ((r.get("manifest") or {}).get("created", ""), r.get("cell_id", "")))
        cells = tidy(records)
        return cls(cells, aggregate(cells), tuple(metrics), source, int(cells["cell_id"].nunique()))

    # --- layout -------------------------------------------------------------
    def variants(self) -> list[str]:
        return list(dict.fromkeys(self.cells["variant"]))

    def streams(self) -> list[str]:
        return list(dict.fromkeys(self.cells["stream"]))

    def entry(self, variant: str, stream: str, metric: str):
        hit = self.table[(self.table.variant == variant) & (self.table.stream == stream) & (self.table.metric == metric)]
        return None if hit.empty else hit.iloc[0]

    def columns(self) -> list[tuple[str, str]]:
        return [(s, m) for s in self.streams() for m in self.metrics]

    @staticmethod
    def fmt(entry, bold=("", "")) -> str:
        if entry is None:
            return "–"
        n = int(entry["n"])
        spread = f" ± {100 * entry['std']:.1f}" if n > 1 else ""  # one seed has no spread to show
        text = f"{100 * entry['mean']:.1f}{spread} ({n})"
        return f"{bold[0]}{text}{bold[1]}" if entry["best"] else text

    def footnote(self) -> str:
        arrows = ", ".join(f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in self.metrics)
        return (
            f"Values in %, mean ± sample std over seeds (n = seeds; no std for one seed); best per column marked; {arrows}. "
            f"Definitions: docs/metrics.md. Built from {self.n_records} records{f' in {self.source}' if self.source else ''}."
        )

    # --- exports ------------------------------------------------------------
    def to_csv(self) -> str:
        cells = self.cells.assign(kind="cell", mean=None, std=None, n=None, best=None)
        agg = self.table.assign(kind="aggregate", method=None, seed=None, cell_id=None, value=None)
        agg["method"] = agg["variant"].map(dict(zip(self.cells["variant"], self.cells["method"])))
        columns = ["kind", "method", "variant", "stream", "metric", "seed", "cell_id", "value", "mean", "std", "n", "best"]
        frame = pd.concat([cells[columns], agg[columns]], ignore_index=True)
        for col in ("value", "mean", "std"):
            frame[col] = pd.to_numeric(frame[col]).round(6)
        frame["n"] = pd.to_numeric(frame["n"]).astype("Int64")
        return frame.to_csv(index=False, lineterminator="\n")

    def to_markdown(self) -> str:
        header = ["method"] + [f"{s} {m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for s, m in self.columns()]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(self.columns())) + "|"]
        for v in self.variants():
            row = [v] + [self.fmt(self.entry(v, s, m), ("**", "**")) for s, m in self.columns()]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n\n" + self.footnote() + "\n"

    def to_latex(self) -> str:
        cols = self.columns()
        streams = self.streams()
        span = len(self.metrics)
        lines = [
            "\\documentclass{article}",
            "\\usepackage{booktabs}",
            "\\usepackage[T1]{fontenc}",
            "\\usepackage[utf8]{inputenc}",
            "\\begin{document}",
            "% clbench leaderboard: copy the table environment into a paper (needs booktabs)",
            "\\begin{table}[t]",
            "\\centering",
            "\\begin{tabular}{l" + "r" * len(cols) + "}",
            "\\toprule",
            " & " + " & ".join(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(s)}}}" for s in streams) + " \\\\",
            " ".join(f"\\cmidrule(lr){{{2 + i * span}-{1 + (i + 1) * span}}}" for i in range(len(streams))),
            "Method & " + " & ".join(f"{latex_escape(m)} {LATEX_ARROW[HIGHER_IS_BETTER[m]]}" for _, m in cols) + " \\\\",
            "\\midrule",
        ]
        for v in self.variants():
            cells = [latex_symbols(self.fmt(self.entry(v, s, m), ("\\textbf{", "}"))) for s, m in cols]
            lines.append(latex_escape(v) + " & " + " & ".join(cells) + " \\\\")
        lines += [
            "\\bottomrule",
            "\\end{tabular}",
            "\\caption{" + latex_symbols(latex_escape(self.footnote())) + "}",
            "\\end{table}",
            "\\end{document}",
        ]
        return "\n".join(lines) + "\n"

    def render(self, fmt: str) -> str:
        return {"csv": self.to_csv, "md": self.to_markdown, "latex": self.to_latex}[fmt]()


LATEX_ARROW = {True: "$\\uparrow$", False: "$\\downarrow$"}


def latex_symbols(text: str) -> str:
    return text.replace("↑", LATEX_ARROW[True]).replace("↓", LATEX_ARROW[False]).replace("±", "$\\pm$").replace("–", "--")


def latex_escape(text: str) -> str:
    out = []
    for ch in str(text):
        out.append({"_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#", "$": "\\$", "{": "\\{", "}": "\\}"}.get(ch, ch))
    return "".join(out)


EXTENSIONS = {"csv": "csv", "md": "md", "latex": "tex"}


def write_leaderboard(board: Leaderboard, out_dir: Path, formats) -> list[Path]:
    from .results import atomic_write_text

    paths = []
    for fmt in formats:
        path = Path(out_dir) / f"leaderboard.{EXTENSIONS[fmt]}"
        atomic_write_text(path, board.render(fmt))
        paths.append(path)
    return paths


"""Leaderboard: records -> mean ± std over seeds -> CSV, Markdown and LaTeX.

Rows are method variants, columns are stream × metric. Records are grouped by
their full configuration minus the seed, so runs that differ in anything but
the seed (another learning rate, a changed class order) are never averaged
together: such groups get distinct row labels.
"""
from __future__ import annotations

import sys
import types
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .aggregate import aggregate, dedupe, paired_differences, stale, tidy
from .metrics import HIGHER_IS_BETTER

DEFAULT_METRICS = ("last", "avg_inc", "forgetting", "drift")  # drift beside forgetting: metrics.py


#: one-line definitions for table footnotes (docs/metrics.md has the full ones)
DEFINITIONS = {
    "last": "accuracy on all seen test data after the last step",
    "avg_inc": "mean over steps of the accuracy on the test data seen so far",
    "avg_acc": "mean over experiences of the final accuracy on each",
    "forgetting": "mean over old experiences of the drop from their best accuracy since they were trained",
    "bwt": "mean over old experiences of final minus just-learned accuracy",
    "fwt": "mean over experiences of accuracy just before training on them minus the initial zero-shot accuracy",
    "zs_retention": "zero-shot accuracy on held-out control classes after the last step, relative to before the first",
    "transfer": "MTIL's Transfer: mean over test sets of their accuracy at the steps before their own was trained",
    "mtil_avg": "MTIL's Avg: mean over test sets of their accuracy averaged over every step",
    "mtil_last": "MTIL's Last: mean over test sets of their final accuracy",
    "drift": "mean over old experiences of 1 − the cosine similarity of their test images' features now and just after "
             "they were learned (×100, not a percentage)",
}
SIGNIFICANCE = 0.05


@dataclass
class Leaderboard:
    cells: pd.DataFrame
    table: pd.DataFrame  # aggregate rows
    metrics: tuple[str, ...]
    source: str  # where the records came from, for the footnote
    n_records: int
    reference: str | None = None  # the variant others are compared with, seed by seed
    paired: pd.DataFrame | None = None
    conflicts: tuple[str, ...] = ()  # cells whose copies disagree on class order
    stale: int = 0  # records from an older results version, left out

    @classmethod
    def from_records(cls, records: list[dict], metrics=DEFAULT_METRICS, source: str = "", order=None,
                     reference: str | None = None) -> "Leaderboard":
        """Rows and columns follow ``order`` (cell ids, e.g. a suite's), else the order records were created.

        ``reference``: a variant label or a method name; every other row then shows its mean
        paired difference to it over matching seeds, marked † when a paired t-test gives p < 0.05.
        """
        n_stale = stale(records)
        records, conflicts = dedupe(records)
        if order is not None:
            rank = {cid: i for i, cid in enumerate(order)}
            records = sorted(records, key=lambda r: (rank.get(r.get("cell_id"), len(rank)), r.get("cell_id", "")))
        else:
            records = sorted(records, key=lambda r: ((r.get("manifest") or {}).get("created", ""), r.get("cell_id", "")))
        cells = tidy(records)
        board = cls(cells, aggregate(cells), tuple(metrics), source, len(records), conflicts=tuple(conflicts), stale=n_stale)
        if reference is not None:
            board.reference = board.resolve_reference(reference)
            board.paired = paired_differences(cells, board.reference)
        return board

    def resolve_reference(self, name: str) -> str:
        """The row ``name`` names (a row label, or a method with one row); UserError naming ``--reference`` otherwise."""
        from .config import reference_row
        from .errors import UserError

        row, hint = reference_row(name, self.variants())
        if row is None:
            raise UserError(f"--reference: no single row '{name}' in the table{hint}")
        return row

    # --- layout -------------------------------------------------------------
    def variants(self) -> list[str]:
        return list(dict.fromkeys(self.cells["variant"]))

    def streams(self) -> list[str]:
        return list(dict.fromkeys(self.cells["stream"]))

    def entry(self, variant: str, stream: str, metric: str):
        hit = self.table[(self.table.variant == variant) & (self.table.stream == stream) & (self.table.metric == metric)]
        return None if hit.empty else hit.iloc[0]

    def columns(self) -> list[tuple[str, str]]:
        """(stream, metric) pairs in order, without the ones no row has a value for (``empty_columns``)."""
        empty = set(self.empty_columns())
        return [(s, m) for s in self.streams() for m in self.metrics if (s, m) not in empty]

    def empty_columns(self) -> list[tuple[str, str]]:
        """(stream, metric) pairs with no value in any row, e.g. ``zs_retention`` on a stream without a control set."""
        present = self.table[self.table["mean"].notna()]
        have = set(zip(present.stream, present.metric))
        return [(s, m) for s in self.streams() for m in self.metrics if (s, m) not in have]

    def comparison(self, variant: str, stream: str, metric: str) -> str:
        if self.paired is None or variant == self.reference:
            return ""
        hit = self.paired[(self.paired.variant == variant) & (self.paired.stream == stream) & (self.paired.metric == metric)]
        if hit.empty:
            return ""
        row = hit.iloc[0]
        mark = "†" if row["p"] == row["p"] and row["p"] < SIGNIFICANCE else ""
        return f" [{100 * row['diff']:+.1f}{mark}]"

    def cell(self, variant: str, stream: str, metric: str, bold=("", "")) -> str:
        return self.fmt(self.entry(variant, stream, metric), bold) + self.comparison(variant, stream, metric)

    @staticmethod
    def fmt(entry, bold=("", "")) -> str:
        if entry is None:
            return "–"
        n = int(entry["n"])
        spread = f" ± {100 * entry['std']:.1f}" if n > 1 else ""  # one seed has no spread to show
        text = f"{100 * entry['mean']:.1f}{spread} ({n})"
        return f"{bold[0]}{text}{bold[1]}" if entry["best"] else text

    def footnote(self) -> str:
        defs = "; ".join(f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}: {DEFINITIONS[m]}" for m in self.metrics)
        text = (
            f"Values in %, mean ± sample std over seeds (n = seeds; no std for one seed); best per column marked. {defs} "
            f"(docs/metrics.md)."
        )
        if self.reference:
            text += (f" [±x]: mean paired difference to {self.reference} over matching seeds, "
                     f"† where a paired t-test gives p < {SIGNIFICANCE}.")
        empty = self.empty_columns()
        if empty:
            by_metric = {m: [s for s, m2 in empty if m2 == m] for m in dict.fromkeys(m for _, m in empty)}
            text += " Left out for lack of any value: " + "; ".join(f"{m} on {', '.join(s)}" for m, s in by_metric.items()) + "."
        if self.stale:
            text += (f" {self.stale} record(s) made by an older clbench (other metric or method definitions) are left out;"
                     " rerun their suite to replace them.")
        if self.conflicts:
            text += f" Rows marked [order …] come from copies of {len(self.conflicts)} cell(s) whose class orders differ; they are not averaged together."
        return text + f" Built from {self.n_records} records{f' in {self.source}' if self.source else ''}."

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
        header = ["method"] + [f"{markdown_escape(s)} {m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for s, m in self.columns()]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(self.columns())) + "|"]
        for v in self.variants():
            row = [markdown_escape(v)] + [self.cell(v, s, m, ("**", "**")) for s, m in self.columns()]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n\n" + self.footnote() + "\n"

    def to_latex(self) -> str:
        cols = self.columns()
        # each stream spans its own columns: a left-out one (no value in any row) narrows it
        spans = [(s, sum(1 for s2, _ in cols if s2 == s)) for s in self.streams()]
        spans = [(s, n) for s, n in spans if n]
        starts = [2 + sum(n for _, n in spans[:i]) for i in range(len(spans))]
        lines = [
            "\\documentclass{article}",
            "\\usepackage{booktabs}",
            "\\usepackage[T1]{fontenc}",
            "\\usepackage[utf8]{inputenc}",
            "%%FALLBACKS%%",
            "\\begin{document}",
            "% clbench leaderboard: copy the table environment into a paper (needs booktabs)",
            "\\begin{table}[t]",
            "\\centering",
            "\\begin{tabular}{l" + "r" * len(cols) + "}",
            "\\toprule",
            " & " + " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{latex_escape(s)}}}" for s, n in spans) + " \\\\",
            " ".join(f"\\cmidrule(lr){{{start}-{start + n - 1}}}" for start, (_, n) in zip(starts, spans)),
            "Method & " + " & ".join(f"{latex_escape(m)} {LATEX_ARROW[HIGHER_IS_BETTER[m]]}" for _, m in cols) + " \\\\",
            "\\midrule",
        ]
        for v in self.variants():
            cells = [latex_symbols(self.cell(v, s, m, ("\\textbf{", "}"))) for s, m in cols]
            lines.append(latex_escape(v) + " & " + " & ".join(cells) + " \\\\")
        lines += [
            "\\bottomrule",
            "\\end{tabular}",
            "\\caption{" + latex_symbols(latex_escape(self.footnote())) + "}",
            "\\end{table}",
            "\\end{document}",
        ]
        at = lines.index("%%FALLBACKS%%")
        lines[at:at + 1] = latex_unicode_fallbacks("\n".join(lines[at + 1:]))
        return "\n".join(lines) + "\n"

    def render(self, fmt: str) -> str:
        return {"csv": self.to_csv, "md": self.to_markdown, "latex": self.to_latex}[fmt]()


LATEX_ARROW = {True: "$\\uparrow$", False: "$\\downarrow$"}


def latex_unicode_fallbacks(body: str) -> list[str]:
    """Preamble lines so that pdflatex compiles any character of ``body``.

    pdflatex typesets the characters its UTF-8 input support defines (accented Latin,
    common punctuation); for each other non-ASCII character (Greek, CJK, emoji, ...) these
    lines make it print as ``[U+XXXX]`` in pdflatex only, where it would otherwise stop the
    build. XeLaTeX and LuaLaTeX print every character as written (their fonts permitting).
    """
    chars = sorted({ch for ch in body if ord(ch) > 127})
    if not chars:
        return []
    lines = ["\\makeatletter",
             "\\ifx\\XeTeXversion\\undefined\\ifx\\directlua\\undefined  % pdflatex: a code point where no glyph is defined"]
    lines += [f"\\@ifundefined{{u8:\\detokenize{{{ch}}}}}{{\\DeclareUnicodeCharacter{{{ord(ch):04X}}}{{\\texttt{{[U+{ord(ch):04X}]}}}}}}{{}}"
              for ch in chars]
    return lines + ["\\fi\\fi", "\\makeatother"]


def latex_symbols(text: str) -> str:
    return (text.replace("↑", LATEX_ARROW[True]).replace("↓", LATEX_ARROW[False]).replace("±", "$\\pm$")
            .replace("–", "--").replace("†", "$^\\dagger$").replace("…", "\\ldots{}"))


#: LaTeX's special characters and what prints each as itself (T1 font encoding, as the document sets)
LATEX_SPECIAL = {"_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#", "$": "\\$", "{": "\\{", "}": "\\}",
                 "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "\\": "\\textbackslash{}"}


def latex_escape(text: str) -> str:
    """Any name as LaTeX text that prints it literally (line breaks and control characters become spaces).

    Non-ASCII characters stay as written; ``latex_unicode_fallbacks`` makes pdflatex accept
    those it has no glyph for.
    """
    text = " ".join(str(text).splitlines())
    return "".join(" " if unicodedata.category(ch) == "Cc" else LATEX_SPECIAL.get(ch, ch) for ch in text)


def markdown_escape(text: str) -> str:
    """Any name as one Markdown table cell: pipes and backslashes escaped, line breaks as spaces."""
    return " ".join(str(text).splitlines()).replace("\\", "\\\\").replace("|", "\\|")


EXTENSIONS = {"csv": "csv", "md": "md", "latex": "tex"}


def write_leaderboard(board: Leaderboard, out_dir: Path, formats) -> list[Path]:
    """Write ``board`` as ``out_dir/leaderboard.{csv,md,tex}`` for each of ``formats``; returns the paths.

    A file that already holds the same text is left as it is (a rerun with nothing to do rewrites nothing).
    """
    from .results import atomic_write_text

    paths = []
    for fmt in formats:
        path = Path(out_dir) / f"leaderboard.{EXTENSIONS[fmt]}"
        text = board.render(fmt)
        if not (path.is_file() and path.read_bytes() == text.encode("utf-8")):
            atomic_write_text(path, text)
        paths.append(path)
    return paths



class _CallableModule(types.ModuleType):
    """The package exports ``clbench.api.leaderboard`` as ``clbench.leaderboard``, the name of this module too:
    once this module is imported, the package attribute is the module, so calling the module calls that function."""

    def __call__(self, results_dirs, metrics=None, reference=None) -> Leaderboard:
        from .api import leaderboard

        return leaderboard(results_dirs, metrics, reference)


sys.modules[__name__].__class__ = _CallableModule

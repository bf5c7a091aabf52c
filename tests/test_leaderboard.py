import io
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clbench.leaderboard import Leaderboard, latex_escape
from clbench.metrics import METRICS, compute_metrics
from clbench.suite import RESULTS_VERSION

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CLBENCH_UPDATE_GOLDEN") == "1"  # regenerate, then review the diff

MATRICES = {  # (variant, stream) -> per-seed accuracy matrices
    ("zeroshot", "toy-ci2"): [[[0.6, 0.5], [0.5, 0.5]], [[0.7, 0.4], [0.6, 0.4]]],
    ("finetune (loss=ce)", "toy-ci2"): [[[0.9, 0.3], [0.2, 0.95]], [[0.8, 0.2], [0.3, 0.9]], [[0.85, 0.1], [0.25, 0.9]]],
    ("zeroshot", "toy_di"): [[[0.5, 0.4], [0.5, 0.4]]],
    ("finetune (loss=ce)", "toy_di"): [[[0.8, 0.5], [0.7, 0.9]], [[0.9, 0.6], [0.6, 0.8]]],
}


def make_record(variant, stream, seed, A, lr=1e-5):
    method = variant.split(" ")[0]
    return {
        "cell_id": f"{method}-{stream}-{seed}-{lr}", "status": "done", "method": method, "variant": variant,
        "stream": stream, "seed": seed, "class_order_hash": f"order{seed}",
        "config": {"method": method, "stream": {"dataset": stream}, "train": {"lr": lr}, "seed": seed,
                   "results_version": RESULTS_VERSION},
        "metrics": compute_metrics(A, [10, 30], initial=[0.5, 0.4]),
    }


def fixed_records():
    records = [make_record(v, s, seed, A) for (v, s), runs in MATRICES.items() for seed, A in enumerate(runs)]
    records.append({"cell_id": "broken", "status": "failed", "method": "finetune", "variant": "finetune", "stream": "toy-ci2", "seed": 9})
    return records


def board():
    return Leaderboard.from_records(fixed_records(), metrics=("last", "forgetting", "bwt"), source="tests/fixtures")


@pytest.mark.parametrize("fmt, ext", [("csv", "csv"), ("md", "md"), ("latex", "tex"), ("md", "ref.md"), ("latex", "ref.tex")])
def test_golden_output(fmt, ext):
    b = board() if not ext.startswith("ref") else Leaderboard.from_records(
        fixed_records(), metrics=("last", "forgetting", "bwt"), source="tests/fixtures", reference="zeroshot")
    text = b.render(fmt)
    path = GOLDEN / f"leaderboard.{ext}"
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text()


def test_a_column_no_row_has_a_value_for_is_left_out_and_said_so(tmp_path):
    records = fixed_records()
    for r in records:
        if r.get("stream") == "toy-ci2" and "metrics" in r:
            r["metrics"]["zs_retention"] = 0.9 if r["method"] == "finetune" else 1.0  # toy_di keeps no control set
    b = Leaderboard.from_records(records, metrics=("last", "zs_retention"))
    assert b.empty_columns() == [("toy_di", "zs_retention")]
    assert b.columns() == [("toy-ci2", "last"), ("toy-ci2", "zs_retention"), ("toy_di", "last")]
    text = b.to_markdown()
    assert "toy_di zs_retention" not in text and "toy-ci2 zs_retention" in text
    assert "Left out for lack of any value: zs_retention on toy_di." in text
    assert "Left out" not in board().to_markdown()  # every column of the fixtures has a value
    # LaTeX: each stream's header spans only its own columns (toy-ci2: 2, toy_di: 1)
    tex = b.to_latex()
    assert "\\multicolumn{2}{c}{toy-ci2} & \\multicolumn{1}{c}{toy\\_di}" in tex
    assert "\\cmidrule(lr){2-3} \\cmidrule(lr){4-4}" in tex and "\\begin{tabular}{lrrr}" in tex
    if shutil.which("pdflatex"):
        (tmp_path / "t.tex").write_text(tex)
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]


def test_table_with_no_value_in_any_column_is_refused(tmp_path):
    from clbench.api import leaderboard
    from clbench.errors import UserError

    (tmp_path / "records").mkdir()
    for i, r in enumerate(fixed_records()):
        if "metrics" in r:
            (tmp_path / "records" / f"{i}.json").write_text(__import__("json").dumps(r))
    with pytest.raises(UserError, match="metrics: no record in .* has a value for zs_retention"):
        leaderboard(tmp_path, ["zs_retention"])
    assert leaderboard(tmp_path, ["last", "zs_retention"]).columns() == [("toy-ci2", "last"), ("toy_di", "last")]


def test_aggregate_numbers_by_hand():
    table = board().table
    row = table[(table.variant == "finetune (loss=ce)") & (table.stream == "toy-ci2") & (table.metric == "last")].iloc[0]
    # last per seed: (0.2*10 + 0.95*30)/40 = 0.7625; (0.3*10+0.9*30)/40 = 0.75; (0.25*10+0.9*30)/40 = 0.7375
    assert row["mean"] == pytest.approx(0.75) and row["n"] == 3
    assert row["std"] == pytest.approx(0.0125)  # sample std (ddof=1)
    assert bool(row["best"])
    single = table[(table.variant == "zeroshot") & (table.stream == "toy_di") & (table.metric == "last")].iloc[0]
    assert single["n"] == 1 and single["std"] == 0.0
    forgetting = table[(table.stream == "toy-ci2") & (table.metric == "forgetting")].set_index("variant")
    assert bool(forgetting.loc["zeroshot", "best"]) and not bool(forgetting.loc["finetune (loss=ce)", "best"])


def test_csv_is_tidy_and_round_trips():
    frame = pd.read_csv(io.StringIO(board().to_csv()))
    cells = frame[frame.kind == "cell"]
    assert len(cells) == 8 * len(METRICS)  # 8 done records × every metric; the failed record is left out
    agg = frame[frame.kind == "aggregate"]
    assert set(agg.metric) == {"last", "avg_inc", "avg_acc", "forgetting", "bwt", "fwt", "transfer", "mtil_avg", "mtil_last"}


def test_runs_differing_in_config_are_never_averaged_together():
    records = fixed_records() + [make_record("zeroshot", "toy_di", 1, [[0.1, 0.1], [0.1, 0.1]], lr=0.1)]
    b = Leaderboard.from_records(records, metrics=("last",))
    zeroshot_rows = [v for v in b.variants() if v.startswith("zeroshot")]
    assert len(zeroshot_rows) == 2 and all("#" in v for v in zeroshot_rows)
    rows = b.table[b.table.variant.isin(zeroshot_rows) & (b.table.stream == "toy_di") & (b.table.metric == "last")]
    assert rows["n"].tolist() == [1, 1]


def test_records_from_any_number_of_devices_share_a_row():
    # train.devices says where a cell ran (it is not in the cell id either); records from before the key lack it
    records = fixed_records()
    zeroshot = [r for r in records if r.get("variant") == "zeroshot"]
    zeroshot[0]["config"]["train"] = {**zeroshot[0]["config"]["train"], "devices": 2}
    zeroshot[1]["config"]["train"] = {**zeroshot[1]["config"]["train"], "devices": 1}
    b = Leaderboard.from_records(records, metrics=("last",))
    assert [v for v in b.variants() if v.startswith("zeroshot")] == ["zeroshot"]
    assert {r["stream"] for r in zeroshot[:2]} == {"toy-ci2"}  # its two seeds: one from 2 devices, one from 1
    rows = b.table[(b.table.variant == "zeroshot") & (b.table.stream == "toy-ci2") & (b.table.metric == "last")]
    assert rows["n"].tolist() == [2]


def test_streams_with_one_label_but_different_data_are_kept_apart():
    records = fixed_records()
    records[0]["config"]["stream"] = {"dataset": "toy-ci2", "num_classes": 99}
    b = Leaderboard.from_records(records, metrics=("last",))
    assert len([s for s in b.streams() if s.startswith("toy-ci2 #")]) == 2


def test_paired_comparison_by_hand():
    b = Leaderboard.from_records(fixed_records(), metrics=("last",), reference="zeroshot")
    row = b.paired[(b.paired.variant == "finetune (loss=ce)") & (b.paired.stream == "toy-ci2") & (b.paired.metric == "last")].iloc[0]
    # seeds 0 and 1 exist for both: finetune last 0.7625, 0.75; zeroshot last (0.5*10+0.5*30)/40 = 0.5, (0.6*10+0.4*30)/40 = 0.45
    assert row["pairs"] == 2 and row["diff"] == pytest.approx(((0.7625 - 0.5) + (0.75 - 0.45)) / 2)
    from scipy import stats

    assert row["p"] == pytest.approx(stats.ttest_rel([0.7625, 0.75], [0.5, 0.45]).pvalue)
    assert "[+28.1†]" in b.cell("finetune (loss=ce)", "toy-ci2", "last")
    with pytest.raises(Exception, match="no single row 'zeroshott'"):
        Leaderboard.from_records(fixed_records(), reference="zeroshott")


def test_merged_copies_count_once_and_class_order_conflicts_are_kept_apart():
    records = fixed_records()
    copy = dict(records[0])
    assert Leaderboard.from_records(records + [copy]).n_records == 8  # the same cell from two machines counts once
    other = dict(records[0], class_order_hash="different")
    b = Leaderboard.from_records(records + [other], metrics=("last",))
    assert b.conflicts == (records[0]["cell_id"],)
    assert any("[order " in v for v in b.variants()) and "class orders differ" in b.footnote()


def test_latex_escaping():
    assert latex_escape("a_b 5% #1 & {x}") == "a\\_b 5\\% \\#1 \\& \\{x\\}"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX engine installed")
@pytest.mark.parametrize("reference", [None, "zeroshot"])
def test_latex_compiles(tmp_path, reference):
    b = Leaderboard.from_records(fixed_records(), metrics=("last", "forgetting", "bwt"), reference=reference)
    (tmp_path / "t.tex").write_text(b.to_latex())
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_records_from_an_older_results_version_are_left_out_and_said_so():
    old = make_record("zeroshot", "toy-ci2", 7, [[0.1, 0.1], [0.1, 0.1]])
    old["config"].pop("results_version")  # made before results versions existed: version 1
    b = Leaderboard.from_records(fixed_records() + [old], metrics=("last",))
    assert b.n_records == board().n_records and b.stale == 1
    assert "1 record(s) made by an older clbench" in b.footnote()
    zs = b.table[(b.table.variant == "zeroshot") & (b.table.stream == "toy-ci2") & (b.table.metric == "last")]
    assert int(zs.n.iloc[0]) == 2  # seeds 0 and 1 only


def test_options_that_only_say_where_data_lives_never_split_a_row_or_a_column(tmp_path, plugins):
    # two machines, one stream: the same birds at /data/m1 and /data/m2, read with different worker counts
    from clbench.suite import load_suite
    from clbench.testing import tiny_suite, write_suite

    cells = []
    for seed, (where, workers) in enumerate([("/data/m1/birds", 2), ("/data/m2/birds", 8)]):
        stream = {"name": "birds", "dataset": "imagefolder", "path": where, "workers": workers}
        suite = load_suite(write_suite(tmp_path / f"s{seed}.yaml", tiny_suite(["zeroshot"], seeds=[seed], streams=[stream])), plugins)
        cells.append(suite.cells[0])
    assert cells[0].config["stream"]["runtime_options"]["path"] == "/data/m1/birds"
    same_seed = load_suite(write_suite(tmp_path / "again.yaml", tiny_suite(["zeroshot"], seeds=[0], streams=[
        {"name": "birds", "dataset": "imagefolder", "path": "/elsewhere/birds", "workers": 0}])), plugins).cells[0]
    assert same_seed.cell_id == cells[0].cell_id  # moving the data never re-runs a cell
    records = [make_record("zeroshot", "birds", c.seed, [[0.5, 0.5], [0.5, 0.5]]) | {"cell_id": c.cell_id, "config": c.config}
               for c in cells]
    b = Leaderboard.from_records(records, metrics=("last",))
    assert b.streams() == ["birds"] and b.variants() == ["zeroshot"]
    assert "(2)" in b.to_markdown()


def test_a_dataset_plugin_declares_its_own_runtime_options(tmp_path):
    # a plugin's cache folder says where data is read from: changing it keeps the cell and the column
    from pydantic import BaseModel

    from clbench import DatasetPlugin, hookimpl
    from clbench.plugins import Plugins, make_plugin_manager
    from clbench.suite import load_suite
    from clbench.testing import tiny_suite, write_suite

    class CachedOptions(BaseModel):
        cache_dir: str = "/tmp/cache"
        flavour: str = "plain"

    class Cached(DatasetPlugin):
        name = "cached"
        Options = CachedOptions
        runtime_options = ("cache_dir",)

        @classmethod
        def build(cls, options):
            raise AssertionError("validation never builds the data")

    class Plugin:
        @hookimpl
        def clbench_add_datasets(self, register):
            register(Cached)

    pm = make_plugin_manager()
    pm.register(Plugin())
    plugins = Plugins(pm)

    def cell(**options):
        suite = tiny_suite(["zeroshot"], streams=[{"name": "c", "dataset": "cached", **options}])
        return load_suite(write_suite(tmp_path / "s.yaml", suite), plugins).cells[0]

    a, b, c = cell(cache_dir="/m1"), cell(cache_dir="/m2"), cell(cache_dir="/m1", flavour="spicy")
    assert a.cell_id == b.cell_id != c.cell_id
    assert a.config["stream"]["runtime_options"] == {"cache_dir": "/m1"} and a.config["stream"]["options"] == {"flavour": "plain"}


NASTY = "world~ci | 2^2 classes \\ 50% & #1"


def named_records(stream: str, variant: str):
    return [make_record(variant, stream, seed, A) for seed, A in enumerate(MATRICES[("finetune (loss=ce)", "toy-ci2")])] + \
        [make_record("zeroshot", stream, seed, A) for seed, A in enumerate(MATRICES[("zeroshot", "toy-ci2")])]


def markdown_cells(line: str) -> int:
    """Cells of a Markdown table row: pipes not escaped by a backslash separate them."""
    import re

    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line)) - 1


def test_the_issues_stream_name_keeps_the_markdown_columns():
    md = Leaderboard.from_records(named_records(NASTY, "finetune (lr=1|2)"), metrics=("last", "bwt")).to_markdown()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert {markdown_cells(line) for line in table} == {3}
    assert "world~ci \\| 2^2 classes \\\\ 50% & #1 last" in table[0]


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=12))
def test_any_names_keep_the_markdown_table_shape(stream, method_suffix):
    b = Leaderboard.from_records(named_records(stream, f"finetune {method_suffix}"), metrics=("last", "bwt"))
    table = [line for line in b.to_markdown().splitlines() if line.startswith("| ") or line.startswith("|---")]
    assert len(table) == 2 + len(b.variants())
    assert {markdown_cells(line) for line in table} == {1 + len(b.columns())}


#: accented Latin, punctuation, Greek, CJK, emoji, zero-width and combining characters, a BOM, control characters
UNICODE_NAMES = "".join(chr(c) for c in [*range(0xA1, 0x180), *range(0x2010, 0x2031), *range(0x391, 0x3AA),
                                         0x540D, 0x1F600, 0x200B, 0xFEFF, 0x0301, 0x07, 0x0C, 0x1B])


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX engine installed")
def test_names_in_any_script_compile_in_latex(tmp_path):
    tex = Leaderboard.from_records(named_records("s " + UNICODE_NAMES, "finetune " + UNICODE_NAMES[::-1]), metrics=("last",)).to_latex()
    (tmp_path / "t.tex").write_text(tex, encoding="utf-8")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "\\DeclareUnicodeCharacter{540D}" in tex and "\\DeclareUnicodeCharacter{00E9}" in tex  # both guarded by @ifundefined
    assert "é" in tex and "名" in tex  # written as they are: XeLaTeX and LuaLaTeX print them


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX engine installed")
@settings(max_examples=8, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=16))
def test_any_printable_name_compiles_in_latex(tmp_path_factory, name):
    folder = tmp_path_factory.mktemp("tex")
    tex = Leaderboard.from_records(named_records(name + " " + NASTY, f"finetune {name}"), metrics=("last",)).to_latex()
    (folder / "t.tex").write_text(tex)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=folder, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]

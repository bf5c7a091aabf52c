"""The HTML report: MEMO's area by hand, escaping, the exact leaderboard values, the CLI's bad input, and a real browser."""
import html
import json
import os
import shutil

import pytest

from clbench import memo
from clbench.api import leaderboard, write_report
from clbench.cli import main
from clbench.metrics import METRICS
from clbench.results import RESULTS_VERSION
from clbench.testing import tiny_suite, write_suite

#: names a page must show literally (quotes, tags, ampersands, a script)
ODD_METHOD = 'er "q" <b>&amp; </script><script>alert(1)</script>'
ODD_STREAM = "s<'&\">"


def record(cell_id, method, variant, stream, seed, last, buffer_bytes=0, memory=None, buffer=None, created="2026-01-01T00:00:00"):
    """A done record with the keys the report reads; ``last`` is every metric's value."""
    A = [[last, 0.1], [0.2, last]]
    return {
        "cell_id": cell_id, "status": "done", "method": method, "variant": variant, "stream": stream, "seed": seed,
        "config": {"method": method, "seed": seed, "results_version": RESULTS_VERSION, "stream": {"name": stream},
                   "params": {"buffer": buffer} if buffer else {}},
        "class_order_hash": "h", "acc_matrix": A, "experiences": [{"test_size": 10}, {"test_size": 10}],
        "metrics": {m: last for m in METRICS}, "buffer": {"exemplars": 0, "bytes": buffer_bytes},
        "memory": {"bytes": memory or {}, "total_bytes": sum((memory or {}).values())},
        "cost": {"wall_s": 1.0}, "manifest": {"created": created, "clbench_version": "0.1.0"},
    }


# --- MEMO: accuracy against total memory, area by hand ------------------------------------------------------------

def sweep_record(method, mb, acc, seed=0, extra=None, stream="s"):
    """A record of ``method`` whose memory is ``mb`` MB (its buffer) plus ``extra`` kinds."""
    return record(f"{method}-{mb}-{seed}", method, method, stream, seed, acc, buffer_bytes=int(mb * memo.MB),
                  memory={"replay_images": int(mb * memo.MB), **(extra or {})}, buffer={"size": mb})


def test_memory_is_buffer_plus_every_other_kind_once():
    r = sweep_record("icarl", 1.0, 0.5, extra={"frozen_models": 500_000, "prototypes": 250_000})
    assert memo.memory_mb(r) == 1.75  # replay_images is the buffer: counted once
    assert memo.memory_mb({"buffer": {"bytes": 0}}) == 0.0  # an old record without 'memory'
    old = sweep_record("icarl", 2.0, 0.6)
    del old["memory"]
    assert [c.buffer_only for c in memo.curves([r, old], "last")["s"].curves] == [1]


def test_memo_area_by_hand():
    # A: (1 MB, 50 %), (3 MB, 70 %); B: (2 MB, 40 %), (4 MB, 60 %) with two seeds per point (mean 40 and 60);
    # C: one point. Common range [max(1, 2), min(3, 4)] = [2, 3].
    # A on [2, 3] runs 60 -> 70 %: mean 65 %. B on [2, 3] runs 40 -> 50 %: mean 45 %.
    records = [sweep_record("A", 1, 0.5), sweep_record("A", 3, 0.7),
               sweep_record("B", 2, 0.35, seed=0), sweep_record("B", 2, 0.45, seed=1),
               sweep_record("B", 4, 0.6), sweep_record("C", 2.5, 0.9)]
    result = memo.curves(records, "last")["s"]
    by = {c.label: c for c in result.curves}
    assert result.range == (2.0, 3.0)
    assert by["A"].area == pytest.approx(0.65) and by["B"].area == pytest.approx(0.45)
    assert by["B"].memory == [2.0, 4.0] and by["B"].accuracy == pytest.approx([0.4, 0.6]) and by["B"].seeds == [2, 1]
    assert by["C"].area is None and by["C"].why == memo.ONE_POINT


def test_a_curve_outside_the_shared_range_gets_no_area_and_says_why():
    # A and B share [2, 3] MB as before; D (a method keeping a 10 MB model copy) lies far above: the areas of A and B
    # are over the range the most curves share, and D says why it has none
    records = [sweep_record("A", 1, 0.5), sweep_record("A", 3, 0.7), sweep_record("B", 2, 0.4), sweep_record("B", 4, 0.6),
               sweep_record("D", 1, 0.5, extra={"frozen_models": 10_000_000}), sweep_record("D", 3, 0.9, extra={"frozen_models": 10_000_000})]
    result = memo.curves(records, "last")["s"]
    by = {c.label: c for c in result.curves}
    assert result.range == (2.0, 3.0) and by["A"].area == pytest.approx(0.65) and by["B"].area == pytest.approx(0.45)
    assert by["D"].memory == [11.0, 13.0] and by["D"].area is None and "does not reach the range" in by["D"].why


def test_area_over_three_points_and_a_range_inside():
    # (0, 0), (1, 1), (2, 1): over [0, 2] the trapezoids are 0.5 and 1: mean 0.75;
    # over [0.5, 2]: 0.5 * (0.5 + 1) / 2 + 1 = 1.375, divided by 1.5
    assert memo.area_over([0, 1, 2], [0, 1, 1], 0, 2) == pytest.approx(0.75)
    assert memo.area_over([0, 1, 2], [0, 1, 1], 0.5, 2) == pytest.approx(1.375 / 1.5)


def test_a_curve_is_the_config_minus_seed_stream_buffer_and_devices():
    a, b, c = sweep_record("er", 1, 0.5), sweep_record("er", 2, 0.6), sweep_record("er", 3, 0.7)
    a["config"]["train"] = {"lr": 0.1, "devices": None}  # a record from before train.devices: the same cell
    b["config"]["train"] = {"lr": 0.1, "devices": 2}
    c["config"]["train"] = {"lr": 0.2, "devices": 1}  # another learning rate: another curve
    curves = memo.curves([a, b, c], "last")["s"].curves
    assert sorted(len(k.memory) for k in curves) == [1, 2]


def test_curves_without_a_common_range_get_no_area():
    records = [sweep_record("A", 1, 0.5), sweep_record("A", 2, 0.6), sweep_record("B", 3, 0.5), sweep_record("B", 4, 0.6)]
    result = memo.curves(records, "last")["s"]
    assert result.range is None and all(c.area is None and c.why == memo.NO_OVERLAP for c in result.curves)
    assert result.notes and memo.NO_OVERLAP in result.notes[0]


# --- the page -------------------------------------------------------------------------------------------------------

#: (method, variant, last) in creation order; then er at two buffer sizes (40 and 60 %) on 'plain' only
ROWS = [("zeroshot", "zeroshot", 0.30), ("odd", ODD_METHOD, 0.50), ("b", "b-method", 0.70)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder of hand-written records: 3 methods × 2 streams × 2 seeds, odd names, an er buffer sweep."""
    root = tmp_path_factory.mktemp("report")
    (root / "records").mkdir()
    n = 0
    for stream in ("plain", ODD_STREAM):
        for i, (method, variant, last) in enumerate(ROWS):
            for seed in (0, 1):
                n += 1
                r = record(f"c{n:02d}", method, variant, stream, seed, last + 0.02 * seed,
                           created=f"2026-01-01T00:00:{i:02d}")
                (root / "records" / f"c{n:02d}.json").write_text(json.dumps(r))
    for mb, acc in ((1, 0.4), (3, 0.6)):
        for seed in (0, 1):
            n += 1
            r = sweep_record("er", mb, acc, seed=seed, stream="plain", extra={"stored_outputs": 100_000})
            r.update(cell_id=f"c{n:02d}", variant=f"er (size={mb})")
            r["manifest"]["created"] = "2026-01-01T00:00:09"
            (root / "records" / f"c{n:02d}.json").write_text(json.dumps(r))
    page = write_report(root, root / "report.html")
    return root, page, page.read_text(encoding="utf-8")


def data_block(text: str) -> dict:
    start = text.index('<script type="application/json" id="report-data">') + len('<script type="application/json" id="report-data">')
    return json.loads(text[start:text.index("</script>", start)])


def test_page_is_self_contained_and_escapes_every_name(results):
    _, _, text = results
    assert "http://" not in text.split("<script>", 1)[0] and 'src="http' not in text and "<link" not in text
    assert ODD_METHOD not in text and ODD_STREAM not in text  # never raw
    assert html.escape(ODD_METHOD) in text and html.escape(ODD_STREAM) in text  # as text in the tables
    data = data_block(text)  # the JSON block ends at its own </script>: no name closes it early
    assert {c["variant"] for c in data["cells"]} >= {ODD_METHOD} and {c["stream"] for c in data["cells"]} == {"plain", ODD_STREAM}
    labels = [t["meta"] for fig in data["steps"] for t in fig["data"]]  # the full label, shown on hover
    assert html.escape(ODD_METHOD, quote=False) + " (n=2)" in labels  # Plotly reads tags: escaped for it
    assert all("<" not in t["name"] for fig in data["steps"] for t in fig["data"])


def test_page_shows_exactly_the_leaderboards_cells(results):
    root, _, text = results
    board = leaderboard(root)
    for v in board.variants():
        for s, m in board.columns():
            assert f">{html.escape(board.cell(v, s, m))}<" in text.replace("<b>", "").replace("</b>", "")
    assert html.escape(board.footnote()) in text


def test_memo_section_of_the_page(results):
    _, _, text = results
    data = data_block(text)
    plain = next(f for f in data["memo"] if f["title"] == "plain")
    er = next(t for t in plain["data"] if t["name"] == "er")
    assert er["x"] == [1.1, 3.1] and er["y"] == [40.0, 60.0]  # buffer + stored outputs (0.1 MB); mean over seeds
    assert memo.ONE_POINT in text and "area, last (%)" in text


def test_each_cell_names_the_file_of_the_copy_shown(tmp_path):
    # a cell failed in one folder and done in another (a rerun elsewhere): the page shows the done copy and its file
    done, failed = record("x1", "er", "er", "s", 0, 0.5), dict(record("x1", "er", "er", "s", 0, 0.5), status="failed")
    for name, r in (("a", failed), ("b", done), ("c", record("y2", "er", "er", "s", 1, 0.6))):
        (tmp_path / name / "records").mkdir(parents=True)
        (tmp_path / name / "records" / f"{r['cell_id']}.json").write_text(json.dumps(r))
    page = write_report([tmp_path / "a", tmp_path / "b", tmp_path / "c"], tmp_path / "r.html")
    files = {c["id"]: c["file"] for c in data_block(page.read_text(encoding="utf-8"))["cells"]}
    assert files == {"x1": str(tmp_path / "b" / "records" / "x1.json"), "y2": str(tmp_path / "c" / "records" / "y2.json")}


def test_run_writes_the_page_when_the_suite_asks(tmp_path):
    from clbench import run_suite

    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], report={"html": True}))
    summary = run_suite(path, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "report.html") in summary.leaderboard_paths
    assert "Plotly" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


# --- the command line -----------------------------------------------------------------------------------------------

def cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_cli_writes_the_page(results, tmp_path, capsys):
    root, _, _ = results
    code, out, err = cli(capsys, "report", root, "-o", tmp_path / "r.html", "--metrics", "last,bwt", "--reference", "zeroshot")
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'r.html'} (") and (tmp_path / "r.html").stat().st_size > 1_000_000
    assert "mean paired difference to zeroshot" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_cli_bad_input_is_one_line_and_exit_2(results, tmp_path, capsys):
    root, _, _ = results
    (tmp_path / "empty").mkdir()
    cases = [
        (["report", tmp_path / "empty", "-o", tmp_path / "r.html"], f"error: {tmp_path / 'empty'}: no records folder here"),
        (["report", root, "-o", tmp_path / "nowhere" / "r.html"], f"error: {tmp_path / 'nowhere' / 'r.html'}: cannot write here: folder"),
        (["report", root, "-o", tmp_path], f"error: {tmp_path}: is a folder"),
        (["report", root, "-o", root / "report.html" / "r.html"], f"error: {root / 'report.html' / 'r.html'}: cannot write here: {root / 'report.html'} is a file"),
        # the output is checked before any folder is read
        (["report", tmp_path / "empty", "-o", tmp_path / "nowhere" / "r.html"], f"error: {tmp_path / 'nowhere' / 'r.html'}: cannot write"),
        (["report", root, "--bogus"], "error: No such option"),  # click names it: --bogus
        (["report", root, tmp_path / "empty"], "error: several results folders: say where the page goes"),
        (["report", root, "--metrics", "lats"], "error: --metrics: unknown metric 'lats'"),
    ]
    for args, line in cases:
        code, out, err = cli(capsys, *args)
        assert code == 2 and err.startswith(line) and err.count("\n") == 1 and out == "", (args, err)
    (tmp_path / "empty" / "records").mkdir()
    code, _, err = cli(capsys, "report", tmp_path / "empty", "-o", tmp_path / "r.html")
    assert code == 2 and "no finished records" in err and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: no unwritable folder to test with")
def test_cli_unwritable_output(results, tmp_path, capsys):
    root, _, _ = results
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = cli(capsys, "report", root, "-o", locked / "r.html")
    assert code == 2 and err == f"error: {locked / 'r.html'}: cannot write here: permission denied\n"


def test_cli_unwritable_output_as_root_too(results, tmp_path, capsys, monkeypatch):
    root, _, _ = results
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path) and real(path, mode))  # this folder only
    code, _, err = cli(capsys, "report", root, "-o", tmp_path / "r.html")
    assert code == 2 and err == f"error: {tmp_path / 'r.html'}: cannot write here: permission denied\n"


# --- in a real browser ----------------------------------------------------------------------------------------------

def browser():
    """(chromium, chromedriver) paths, or a pytest skip saying what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no headless Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver; .ci/run does)")
    return chromium, driver


def test_page_in_a_real_browser(results, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    chromium, driver_path = browser()
    _, page, _ = results
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2000",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):  # the network: a dead proxy
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        d.get(page.resolve().as_uri())
        errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
        assert d.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length") >= 6  # figures drawn
        first_column = lambda: [row.find_elements(By.TAG_NAME, "td")[0].text for row in d.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")]
        assert first_column() == ["zeroshot", ODD_METHOD, "b-method", "er (size=1)", "er (size=3)"]  # the names, literally
        header = next(th for th in d.find_elements(By.CSS_SELECTOR, "#leaderboard th") if th.text.startswith("plain · last"))
        header.click()  # best first
        assert first_column() == ["b-method", "er (size=3)", ODD_METHOD, "er (size=1)", "zeroshot"]  # 71, 60, 51, 40, 31 %
        header.click()  # reversed
        assert first_column() == ["zeroshot", "er (size=1)", ODD_METHOD, "er (size=3)", "b-method"]
        odd_last = next(th for th in d.find_elements(By.CSS_SELECTOR, "#leaderboard th") if th.text.startswith(ODD_STREAM + " · last"))
        odd_last.click()  # er has no value on this stream: its rows go last
        assert first_column()[:3] == ["b-method", ODD_METHOD, "zeroshot"] and set(first_column()[3:]) == {"er (size=1)", "er (size=3)"}
        pick = d.find_element(By.ID, "cell-pick")
        assert ODD_METHOD in pick.text and "plain" in d.find_element(By.ID, "cell-config").text
        shot = tmp_path / "report.png"
        assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}; page: {page.stat().st_size} bytes")
        assert [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
    finally:
        d.quit()

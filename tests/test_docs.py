"""The guides' code runs as written, so they cannot drift from the API."""
import re
import sys
import types
from pathlib import Path

from clbench.testing import run_method, tiny_suite, write_suite

GUIDE = Path(__file__).parent.parent / "docs" / "writing_methods.md"
PYTHON_API = Path(__file__).parent.parent / "docs" / "python_api.md"


def executed_block(path: Path) -> str:
    """The Python block a guide marks as executed by this file."""
    return re.search(r"<!-- the block below is executed.*?-->\n```python\n(.*?)```", path.read_text(), re.S).group(1)


def test_walkthrough_method_runs(plugins):
    code = executed_block(GUIDE)
    module = types.ModuleType("clbench_pullback")
    sys.modules["clbench_pullback"] = module
    try:
        exec(compile(code, str(GUIDE), "exec"), module.__dict__)
        record = run_method(module.PullBack, {"alpha": 0.5}, train={"epochs": 2}, plugins=plugins)
    finally:
        sys.modules.pop("clbench_pullback", None)
    assert record["status"] == "done", record.get("traceback")
    assert record["method_state"] == {"alpha": 0.5}
    # alpha = 1 puts the weights back to pretrained after every experience: exactly zero-shot's results
    restored = run_method(module.PullBack, {"alpha": 1.0}, plugins=plugins)
    zeroshot = run_method(plugins.methods.get("zeroshot"), plugins=plugins)
    assert restored["acc_matrix"] == zeroshot["acc_matrix"]


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    """The example as written, in a folder whose suites/smoke.yaml is a seconds-long suite of the same methods."""
    (tmp_path / "suites").mkdir()
    write_suite(tmp_path / "suites" / "smoke.yaml", tiny_suite(["zeroshot", "finetune"], name="smoke"))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(executed_block(PYTHON_API), str(PYTHON_API), "exec"), namespace)
    out = capsys.readouterr().out
    assert "2 cells" in out and "2 run, 0 already there, 0 failed" in out and "\\toprule" in out
    assert namespace["summary"].ok and namespace["board"].reference == "zeroshot"
    assert (tmp_path / "results" / "smoke" / "leaderboard.md").is_file()
    assert namespace["figures"] and all(p.is_file() for p in namespace["figures"])

"""The plugin walkthrough's code runs as written, so the guide cannot drift from the API."""
import re
import sys
import types
from pathlib import Path

from clbench.testing import run_method

GUIDE = Path(__file__).parent.parent / "docs" / "writing_methods.md"


def test_walkthrough_method_runs(plugins):
    text = GUIDE.read_text()
    code = re.search(r"<!-- the block below is executed.*?-->\n```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("clbench_wiseft")
    sys.modules["clbench_wiseft"] = module
    try:
        exec(compile(code, str(GUIDE), "exec"), module.__dict__)
        record = run_method(module.WiseFT, {"alpha": 0.5}, train={"epochs": 2}, plugins=plugins)
    finally:
        sys.modules.pop("clbench_wiseft", None)
    assert record["status"] == "done", record.get("traceback")
    assert record["method_state"] == {"alpha": 0.5}
    # alpha = 1 puts the weights back to pretrained after every experience: exactly zero-shot's results
    restored = run_method(module.WiseFT, {"alpha": 1.0}, plugins=plugins)
    zeroshot = run_method(plugins.methods.get("zeroshot"), plugins=plugins)
    assert restored["acc_matrix"] == zeroshot["acc_matrix"]

"""The story the demo tells a newcomer, pinned on a reduced demo.

suites/demo.yaml's class- and domain-incremental streams, exactly as the demo
defines them, with three of its methods (zeroshot, finetune with the
cross-entropy loss, er with 5 % memory) and its two seeds. What must hold, each
margin computed from the records and compared with the seed spread in the
same records:

- training beats zero-shot on what the streams teach (the compositions and
  the domain the tiny CLIP never saw): er's ``last`` above zeroshot's;
- finetune forgets more than replay where the label space stays fixed
  (the domain-incremental stream);
- zeroshot keeps its lead on the control set the tiny CLIP was pretrained on
  (``zs_retention`` below 1 for every training method and seed, and finetune
  losing more than 15 % of it, twice its seed spread).
"""
import statistics
from pathlib import Path

import pytest
import yaml

from clbench.api import records_of, run_suite

ROOT = Path(__file__).resolve().parent.parent
STREAMS = ("world-ci5", "world-di4")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    demo = yaml.safe_load((ROOT / "suites" / "demo.yaml").read_text())
    suite = {
        **demo, "name": "demo_story",
        "streams": [s for s in demo["streams"] if s["name"] in STREAMS],
        "methods": ["zeroshot", {"name": "finetune", "loss": "ce"}, next(m for m in demo["methods"] if isinstance(m, dict) and m["name"] == "er")],
        "report": {"metrics": ["last", "forgetting", "zs_retention"], "formats": ["csv"]},
    }
    folder = tmp_path_factory.mktemp("demo_story")
    (folder / "suite.yaml").write_text(yaml.safe_dump(suite))
    summary = run_suite(folder / "suite.yaml", folder / "results", progress=False)
    assert summary.ok
    return records_of(folder / "results")


def by_seed(records, method: str, stream: str, metric: str) -> dict[int, float]:
    return {r["seed"]: r["metrics"][metric] for r in records if r["method"] == method and r["stream"] == stream}


def paired(records, better: str, worse: str, stream: str, metric: str) -> tuple[float, float]:
    """Mean over seeds of better − worse, and the larger of the two methods' sample std over seeds."""
    a, b = by_seed(records, better, stream, metric), by_seed(records, worse, stream, metric)
    assert sorted(a) == sorted(b) == [0, 1], (better, worse, stream)
    margin = statistics.mean(a[s] - b[s] for s in a)
    return margin, max(statistics.stdev(a.values()), statistics.stdev(b.values()))


@pytest.mark.parametrize("stream", STREAMS)
def test_training_beats_zero_shot_on_what_the_stream_teaches(records, stream):
    margin, spread = paired(records, "er", "zeroshot", stream, "last")
    assert margin > 0.05 and margin > 4 * spread, (stream, margin, spread)


def test_finetune_forgets_more_than_replay(records):
    margin, spread = paired(records, "finetune", "er", "world-di4", "forgetting")
    assert margin > 0.03 and margin > 3 * spread, (margin, spread)


def test_zero_shot_keeps_its_lead_on_the_control_set(records):
    assert set(by_seed(records, "zeroshot", "world-ci5", "zs_retention").values()) == {1.0}  # untrained: by definition
    for method in ("finetune", "er"):
        assert max(by_seed(records, method, "world-ci5", "zs_retention").values()) < 1.0, method
    retained = by_seed(records, "finetune", "world-ci5", "zs_retention")
    lost = 1 - statistics.mean(retained.values())
    assert lost > 0.15 and lost > 2 * statistics.stdev(retained.values()), retained
    # the control set is classes the tiny CLIP was pretrained on: zero-shot knows them far better than the taught ones
    zero_shot_last = statistics.mean(by_seed(records, "zeroshot", "world-ci5", "last").values())
    for r in records:
        if r["stream"] == "world-ci5":
            assert r["control_acc"]["before"] > 1.5 * zero_shot_last
            assert r["control_classes"] == list(range(40, 70))  # suites/demo.yaml's list, the same for every seed
        else:
            assert r["control_classes"] == []

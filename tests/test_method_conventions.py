"""What docs/writing_methods.md section 3.1 promises a method, checked with a probe method."""
import torch

from clbench import Method
from clbench.testing import run_method

STREAM = {"dataset": "synthetic", "scenario": "class_incremental", "steps": 3, "num_classes": 6,
          "train_per_class": 4, "test_per_class": 2, "world_domains": ["clean"]}


class Probe(Method):
    """Records, per training step, the facts a plugin author relies on."""

    name = "probe_conventions"
    seen: list = []

    def loss(self, batch):
        learner = self.learner
        t = batch.exp.index
        cached = learner.class_features(batch.classes)  # grad=False: cached until the text tower changes
        Probe.seen.append({
            "index": t, "classes": list(batch.exp.classes), "seen": learner.stream.seen(t),
            "old": learner.stream.seen(t - 1), "autocast": torch.is_autocast_enabled("cpu"),
            "cached_again": torch.equal(learner.class_features(batch.classes), cached),
            "first_prompt": learner.class_features(learner.stream.seen(0)[:1])[0].clone(),
        })
        features = learner.encode_images(batch.images)
        text = learner.class_features(batch.classes, grad=True)
        return -(features @ text.t()).float().mean()


def test_indices_seen_classes_autocast_and_the_prompt_cache():
    Probe.seen = []
    record = run_method(Probe, stream=STREAM, train={"amp": "bf16", "epochs": 1})
    assert record["status"] == "done", record.get("error")
    by_index = {s["index"]: s for s in Probe.seen}
    assert sorted(by_index) == [0, 1, 2]  # exp.index is 0-based
    order = record["class_order"]
    for t, s in by_index.items():
        assert s["classes"] == order[2 * t: 2 * t + 2]
        assert s["seen"] == order[: 2 * t + 2]  # seen(t) includes experience t, old classes first
        assert s["old"] == order[: 2 * t]  # seen(t - 1): the old classes, [] before the first
    assert all(s["autocast"] for s in Probe.seen)  # loss runs under the cell's mixed precision
    assert all(s["cached_again"] for s in Probe.seen)  # the same features within a step
    firsts = [s["first_prompt"] for s in Probe.seen]
    assert len(firsts) >= 3 and all(not torch.equal(a, b) for a, b in zip(firsts, firsts[1:]))  # dropped after each step

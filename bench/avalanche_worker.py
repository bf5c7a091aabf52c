"""Avalanche's side of bench/avalanche_side_by_side.py (runs in its own virtual environment).

Reads the stream, the tiny CLIP config and its weights that the driver saved,
runs Avalanche's Naive (or Naive + ReplayPlugin) on exactly that work and
prints the seconds it took and the images it processed, as JSON.
"""
import json
import sys
import time

import open_clip
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_tensor_classification_dataset
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.supervised import Naive


class ClipClassifier(torch.nn.Module):
    """Scores over every class's prompt; text features cached while evaluating (as a careful user would)."""

    def __init__(self, model, tokens):
        super().__init__()
        self.model, self.tokens, self.cache = model, tokens, None

    def forward(self, x):
        image = F.normalize(self.model.encode_image(x), dim=-1)
        if self.training or self.cache is None:
            text = F.normalize(self.model.encode_text(self.tokens), dim=-1)
            self.cache = None if self.training else text.detach()
        else:
            text = self.cache
        return self.model.logit_scale.exp().clamp(max=100) * image @ text.t()

    def train(self, mode=True):
        self.cache = None
        return super().train(mode)


def main():
    spec = torch.load(sys.argv[1], weights_only=True)
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec["threads"])
    open_clip.add_model_config(spec["config_dir"])
    model = open_clip.create_model(spec["arch"], pretrained=spec["weights"])
    tokens = open_clip.get_tokenizer(spec["arch"])([spec["template"].format(n) for n in spec["class_names"]])
    mean, std = torch.tensor(spec["mean"]).view(1, 3, 1, 1), torch.tensor(spec["std"]).view(1, 3, 1, 1)
    prep = lambda x: (x.float() / 255 - mean) / std  # noqa: E731
    train = _make_taskaware_tensor_classification_dataset(prep(spec["train_x"]), spec["train_y"], targets=spec["train_y"].tolist(), task_labels=0)
    test = _make_taskaware_tensor_classification_dataset(prep(spec["test_x"]), spec["test_y"], targets=spec["test_y"].tolist(), task_labels=0)
    bench = class_incremental_benchmark({"train": train, "test": test}, class_order=spec["class_order"], num_experiences=spec["steps"])
    net = ClipClassifier(model, tokens)
    decay = [p for p in net.parameters() if p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": spec["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}], lr=spec["lr"])
    plugins = [ReplayPlugin(mem_size=spec["mem_size"])] if spec["mem_size"] else []
    strategy = Naive(model=net, optimizer=optimizer, train_mb_size=spec["batch_size"], train_epochs=spec["epochs"],
                     eval_mb_size=spec["eval_batch_size"], plugins=plugins,
                     evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    start = time.perf_counter()
    strategy.eval(bench.test_stream)
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
    print(json.dumps({"seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()

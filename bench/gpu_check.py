"""Throughput of clbench's own training and evaluation paths on one GPU (or the CPU, for a dry run).

    python bench/gpu_check.py [--arch ViT-B-16] [--batch 128] [--steps 30]

Builds the model with random weights (no download), a stream of random
224-px uint8 images in memory, and times, through the Learner exactly as a
cell uses it: a `finetune` step (contrastive, both towers), a `dro_replay`
step (new batch + replay batch of the same size), and evaluation. Prints
images/s, model FLOPs utilisation (forward FLOPs counted with
torch.utils.flop_counter, training = 3 × forward) against the bf16 dense
peak given by --peak-tflops, and peak GPU memory.
"""
import argparse
import json
import time

import torch

from clbench.buffer import BufferSpec, ReplayBuffer
from clbench.config import TrainConfig
from clbench.data.base import Dataset, InMemoryImageSet
from clbench.data.scenarios import build_stream
from clbench.data.synthetic import TEMPLATES, class_name
from clbench_methods.dro import KLDRO
from clbench.learner import Learner
from clbench_methods.objective import objective, objective_by_class
from clbench.models import build_clip


def forward_flops(clip, device, size) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=device)
    tokens = clip.tokenizer(["a photo of a red circle."]).to(device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        clip.model.encode_image(x)
    image = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        clip.model.encode_text(tokens)
    return image, counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H100/H200 SXM: 989)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="train.compile: torch.compile the encoders")
    ap.add_argument("--host-data", action="store_true", help="train.data_on_device: false (copy each batch from host memory)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    clip = build_clip(args.arch, None, device)
    size = clip.image_size
    n = args.batch * args.steps
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % args.classes
    data = InMemoryImageSet(images, labels)
    dataset = Dataset("random", [class_name(k) for k in range(args.classes)], list(TEMPLATES), data, data.subset(torch.arange(min(n, 4 * args.eval_batch))))
    stream = build_stream(dataset, "class_incremental", 0, "random", steps=1)
    cfg = TrainConfig(epochs=1, batch_size=args.batch, eval_batch_size=args.eval_batch, lr=1e-5, amp="bf16" if device.type == "cuda" else "none", device=str(device),
                      compile=args.compile, data_on_device=not args.host_data)
    learner = Learner(clip, stream, cfg, seed=0)
    exp = stream.experiences[0]
    img_flops, txt_flops = forward_flops(clip, device, size)
    results = {"arch": args.arch, "compile": args.compile, "data_on_device": not args.host_data, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "image_size": size, "batch": args.batch, "forward_gflops_per_image": img_flops / 1e9,
               "forward_gflops_per_prompt": txt_flops / 1e9}

    def timed(label, fn, images_per_call):
        fn()  # warm-up (allocator, kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rate = images_per_call / seconds
        results[f"{label}_img_per_s"] = round(rate, 1)
        results[f"{label}_peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
        return rate

    def finetune():
        learner.fit(exp, lambda batch: objective(learner, batch, "contrastive"))

    rate = timed("finetune_train", finetune, n)
    results["finetune_train_mfu"] = round(3 * img_flops * rate / (args.peak_tflops * 1e12), 3)

    buffer = ReplayBuffer(BufferSpec(size=4 * args.batch), n, seed=0)
    buffer.update(data.subset(torch.arange(4 * args.batch)), list(range(args.classes)))
    dro = KLDRO(1.0, 0.9)

    def dro_loss(batch):  # dro_replay's step: er's objective split per class, KL-DRO weights
        terms = objective_by_class(learner, batch, "contrastive")
        return dro.loss(terms.mean, terms.share)[0]

    def dro_replay():
        learner.fit(exp, dro_loss, replay=buffer, replay_batch_size=args.batch)

    rate = timed("dro_replay_train", dro_replay, 2 * n)
    results["dro_replay_train_mfu"] = round(3 * img_flops * rate / (args.peak_tflops * 1e12), 3)

    def evaluate():
        learner.weights_changed()  # force a fresh pass (no cached features)
        learner.zero_shot_accuracy(exp.test, exp.classes)

    rate = timed("eval", evaluate, len(exp.test))
    results["eval_mfu"] = round(img_flops * rate / (args.peak_tflops * 1e12), 3)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

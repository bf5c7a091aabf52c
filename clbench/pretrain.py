"""Pretrain the shipped tiny CLIP on the synthetic world, so the offline demo has a real zero-shot model.

Run ``clbench pretrain`` (defaults reproduce the committed checkpoint) to
rebuild ``clbench/weights/tinyworld/``. The model never sees the held-out
domain and compositions of ``clbench.data.synthetic``, so streams over them
show adaptation, not only forgetting. Weights are stored in fp16 (half the
bytes; loading casts them back to fp32) beside an ``open_clip_config.json``,
so the folder is also a valid ``local-dir:`` model.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data.synthetic import DOMAINS, PRETRAIN_DOMAINS, PRETRAIN_HELD_OUT_CLASSES, TEMPLATES, MAX_CLASSES, class_name, render_split
from .models import CONFIG_DIR, build_clip

WEIGHTS_DIR = Path(__file__).parent / "weights" / "tinyworld"
ARCH = "clbench-tiny-32"
DOMAIN_CAPTIONS = {
    "clean": ("a clean photo of a {}.",),
    "noisy": ("a noisy photo of a {}.", "a grainy picture of a {}."),
    "inverted": ("an inverted photo of a {}.", "a negative image of a {}."),
    "sketch": ("a sketch of a {}.", "an outline drawing of a {}."),
}


def pretrain_classes() -> list[int]:
    return [k for k in range(MAX_CLASSES) if k not in PRETRAIN_HELD_OUT_CLASSES]


def _captions(domain: str) -> tuple[str, ...]:
    return TEMPLATES + DOMAIN_CAPTIONS[domain]


def multi_positive_clip_loss(image_features, text_features, labels, logit_scale) -> torch.Tensor:
    """CLIP's symmetric loss where every pair of the same class counts as a positive."""
    logits = logit_scale * image_features @ text_features.t()
    positive = labels[:, None] == labels[None, :]
    masked = logits.masked_fill(~positive, float("-inf"))
    i2t = torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)
    t2i = torch.logsumexp(logits, 0) - torch.logsumexp(masked, 0)
    return (i2t.mean() + t2i.mean()) / 2


@torch.no_grad()
def zero_shot_accuracy(clip, images: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> float:
    model = clip.model.eval()
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    prompts = [t.format(class_name(c)) for c in classes for t in TEMPLATES]
    text = F.normalize(model.encode_text(clip.tokenizer(prompts)), dim=-1).view(len(classes), len(TEMPLATES), -1).mean(1)
    text = F.normalize(text, dim=-1)
    correct = 0
    for start in range(0, len(images), 512):
        x = (images[start : start + 512].float() / 255 - mean) / std
        scores = F.normalize(model.encode_image(x), dim=-1) @ text.t()
        correct += (torch.tensor(classes)[scores.argmax(1)] == labels[start : start + 512]).sum().item()
    return correct / len(images)


def pretrain(out_dir: Path = WEIGHTS_DIR, seed: int = 0, epochs: int = 30, per_class: int = 60, batch_size: int = 256,
             lr: float = 2e-3, log=print) -> dict:
    torch.manual_seed(seed)
    clip = build_clip(ARCH)
    model = clip.model.train()
    classes = pretrain_classes()
    data = render_split("pretrain", classes, PRETRAIN_DOMAINS, per_class)
    captions = {d: _captions(d) for d in PRETRAIN_DOMAINS}
    # every (class, domain, caption) prompt tokenised once
    tokens = {
        (c, d): clip.tokenizer([t.format(class_name(c)) for t in captions[name]])
        for c in classes for d, name in enumerate(PRETRAIN_DOMAINS)
    }
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
    )
    g = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for epoch in range(epochs):
        running = torch.zeros(())
        order = torch.randperm(len(data), generator=g)
        for start in range(0, len(data), batch_size):
            index = order[start : start + batch_size]
            labels, domains = data.labels[index], data.domains[index]
            pick = torch.randint(0, 1 << 30, (len(index),), generator=g)
            text_tokens = torch.stack([
                tokens[(c, d)][i % len(tokens[(c, d)])] for c, d, i in zip(labels.tolist(), domains.tolist(), pick.tolist())
            ])
            x = (data.load(index).float() / 255 - mean) / std
            img = F.normalize(model.encode_image(x), dim=-1)
            txt = F.normalize(model.encode_text(text_tokens), dim=-1)
            loss = multi_positive_clip_loss(img, txt, labels, model.logit_scale.exp().clamp(max=100))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach()
        log(f"epoch {epoch + 1}/{epochs}: loss {running.item() / steps_per_epoch:.3f} ({time.perf_counter() - started:.0f}s)")
    seconds = time.perf_counter() - started
    settings = {"seed": seed, "epochs": epochs, "per_class": per_class, "batch_size": batch_size, "lr": lr}
    return save_checkpoint(clip, Path(out_dir), settings, seconds, log)


def evaluation_set(domain: str = "clean", num_classes: int = 50, per_class: int = 20):
    """The demo's class-incremental test images (the synthetic dataset's test split)."""
    return render_split("test", range(num_classes), [domain], per_class)


def save_checkpoint(clip, out_dir: Path, settings: dict, seconds: float, log=print) -> dict:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in clip.model.state_dict().items()}
    weights = out_dir / "open_clip_model.safetensors"
    save_file(state, str(weights))
    model_cfg = json.loads((CONFIG_DIR / f"{ARCH}.json").read_text())
    (out_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}, indent=2) + "\n")
    reloaded = build_clip(ARCH, str(weights))
    accuracy = {}
    for domain in DOMAINS:
        test = evaluation_set(domain)
        accuracy[domain] = round(zero_shot_accuracy(reloaded, test.images, test.labels, list(range(50))), 4)
    # the demo's world-ci5 in the clean domain: its taught classes (held out here) and its control set (pretrained)
    groups = {"held_out": list(PRETRAIN_HELD_OUT_CLASSES), "pretrained": pretrain_classes()}
    split = {}
    for group, classes in groups.items():
        test = render_split("test", classes, ["clean"], 20)
        split[group] = round(zero_shot_accuracy(reloaded, test.images, test.labels, classes), 4)
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
    manifest = {
        "arch": ARCH, "command": f"clbench pretrain {args}", **settings,
        "pretrain_domains": list(PRETRAIN_DOMAINS), "held_out_classes": list(PRETRAIN_HELD_OUT_CLASSES),
        "train_seconds": round(seconds, 1), "torch": torch.__version__,
        "zero_shot_accuracy_50_classes": accuracy,
        "zero_shot_accuracy_clean_by_group": split,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "bytes": weights.stat().st_size,
    }
    (out_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB); zero-shot accuracy on 50 classes: {accuracy}")
    return manifest

"""Miniature copies of real datasets, written in their exact on-disk formats."""
import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_jpeg, write_png

CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()


def image(seed: int, h: int = 40, w: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, per in (("train", train_per_class), ("test", test_per_class)):
        labels = [c for c in range(100) for _ in range(per)]
        batch = {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{name} batch 1 of 1",
            "fine_labels": labels,
            "coarse_labels": [c // 5 for c in labels],
            "data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": CIFAR100_NAMES, "coarse_label_names": [f"super{i}" for i in range(20)]}, f, protocol=2)
    return folder


def write_imagenet(root: Path, wnids, per_split=(2, 1)) -> Path:
    base = root / "imagenet"
    for split, per in zip(("train", "val"), per_split):
        for i, wnid in enumerate(wnids):
            folder = base / split / wnid
            folder.mkdir(parents=True)
            for k in range(per):
                write_jpeg(image(100 * i + k + (0 if split == "train" else 50)), str(folder / f"{wnid}_{k}.JPEG"))
    return base


def write_domainnet(root: Path, domains, classes=("aircraft_carrier", "zebra"), per_split=(2, 1)) -> Path:
    base = root / "domainnet"
    for d, domain in enumerate(domains):
        for split, per in zip(("train", "test"), per_split):
            lines = []
            for label, name in enumerate(classes):
                folder = base / domain / name
                folder.mkdir(parents=True, exist_ok=True)
                for k in range(per):
                    file = f"{domain}_{label:03d}_{split}{k:06d}.jpg"
                    write_jpeg(image(1000 * d + 10 * label + k, 36, 48), str(folder / file))
                    lines.append(f"{domain}/{name}/{file} {label}")
            (base / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_imagefolder(root: Path, classes=("red_apple", "blue_car"), domains=None, per_split=(3, 2)) -> Path:
    for split, per in zip(("train", "test"), per_split):
        for d, domain in enumerate(domains or [None]):
            for c, name in enumerate(classes):
                folder = root / split / (domain or "") / name
                folder.mkdir(parents=True, exist_ok=True)
                for k in range(per):
                    write_png(image(50 * c + k + 7 * d, 32, 32), str(folder / f"{k}.png"))
    return root

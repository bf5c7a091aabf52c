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


def write_tinyimagenet(root: Path, wnids, names=None, per_split=(2, 1)) -> Path:
    """tiny-imagenet-200 as its zip unpacks: wnids.txt, words.txt, train/<wnid>/images/*.JPEG with <wnid>_boxes.txt,
    val/images/*.JPEG with val/val_annotations.txt (file, wnid, box; tab-separated), test/images/*.JPEG."""
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "test" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    words = ["n00001740\tentity"] + [f"{w}\t{(names or {}).get(w, 'thing ' + w)}, other name" for w in wnids]
    (base / "words.txt").write_text("\n".join(words) + "\n")
    annotations, v = [], 0
    for i, wnid in enumerate(wnids):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for k in range(per_split[0]):
            write_jpeg(image(300 + 10 * i + k, 16, 16), str(images / f"{wnid}_{k}.JPEG"))
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t15\t15")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
        for _ in range(per_split[1]):
            write_jpeg(image(5000 + v, 16, 16), str(base / "val" / "images" / f"val_{v}.JPEG"))
            annotations.append(f"val_{v}.JPEG\t{wnid}\t0\t0\t15\t15")
            v += 1
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    write_jpeg(image(9999, 16, 16), str(base / "test" / "images" / "test_0.JPEG"))
    return base


def write_imagenet_r(root: Path, wnids, per_class=5, split="coda") -> Path:
    """imagenet-r/<wnid>/<kind>_<k>.jpg as the tar unpacks, with CODA-Prompt's imagenet-r_{train,test}.yaml beside
    (an 80/20 draw, YAML {data: ['data/imagenet-r/<wnid>/<file>', ...], targets: [<id>, ...]}, ids not in sorted-wnid
    order); with ``split='folders'`` the pre-split imagenet-r/{train,test}/<wnid>/."""
    import random

    base = root / "imagenet-r"
    items = []
    for i, wnid in enumerate(wnids):
        for k in range(per_class):
            items.append((wnid, f"{('art', 'sketch', 'toy')[k % 3]}_{k}.jpg", 700 + 10 * i + k))
    if split == "folders":
        for n, (wnid, file, seed) in enumerate(items):
            folder = base / ("test" if n % per_class == 0 else "train") / wnid
            folder.mkdir(parents=True, exist_ok=True)
            write_jpeg(image(seed, 16, 16), str(folder / file))
        return base
    for wnid, file, seed in items:
        (base / wnid).mkdir(parents=True, exist_ok=True)
        write_jpeg(image(seed, 16, 16), str(base / wnid / file))
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    cut = int(0.8 * len(items))
    target = {w: t for t, w in enumerate(reversed(wnids))}  # CODA's ids are not the sorted ones
    for name, part in (("imagenet-r_train.yaml", order[:cut]), ("imagenet-r_test.yaml", order[cut:])):
        lines = ["data:"] + [f"- data/imagenet-r/{items[n][0]}/{items[n][1]}" for n in part]
        lines += ["targets:"] + [f"- {target[items[n][0]]}" for n in part]
        (base / name).write_text("\n".join(lines) + "\n")
    return base


def write_cub200(root: Path, classes=("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"),
                 per_split=(2, 1)) -> Path:
    """CUB_200_2011 as the tgz unpacks: classes.txt, images.txt, image_class_labels.txt, train_test_split.txt
    ('<id> <value>' lines, ids from 1) and images/<NNN.Name>/<file>.jpg."""
    base = root / "CUB_200_2011"
    lines = {"images": [], "labels": [], "split": []}
    n = 0
    for c, folder in enumerate(classes, 1):
        (base / "images" / folder).mkdir(parents=True)
        stem = folder.split(".", 1)[1]
        for k in range(sum(per_split)):
            n += 1
            file = f"{stem}_{k:04d}_{n}.jpg"
            write_jpeg(image(2000 + n, 16, 16), str(base / "images" / folder / file))
            lines["images"].append(f"{n} {folder}/{file}")
            lines["labels"].append(f"{n} {c}")
            lines["split"].append(f"{n} {1 if k < per_split[0] else 0}")
    (base / "classes.txt").write_text("".join(f"{c} {folder}\n" for c, folder in enumerate(classes, 1)))
    (base / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    return base


def write_core50(root: Path, objects=(1, 6, 11), frames=2, sessions=range(1, 12)) -> Path:
    """core50_128x128/s<k>/o<j>/C_<kk>_<jj>_<fff>.png for the given objects in the given sessions."""
    base = root / "core50_128x128"
    for s in sessions:
        for o in objects:
            folder = base / f"s{s}" / f"o{o}"
            folder.mkdir(parents=True)
            for f in range(frames):
                write_png(image(100 * s + 10 * o + f, 16, 16), str(folder / f"C_{s:02d}_{o:02d}_{f:03d}.png"))
    return base

"""The torchvision dataset plugin on miniature copies written in torchvision 0.29's exact on-disk layouts.

Where torchvision's own class can read the miniature (no checksum in the way), the test
compares clbench's parse with torchvision's (files, labels, classes): the layouts are
then torchvision's by construction, not by this file's say-so.
"""
import importlib.util
import json
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from torchvision.io import write_jpeg

import clbench.data.torchvision_sets as tvs
from clbench.errors import UserError
from clbench.testing import TINY_MODEL, TINY_TRAIN, write_suite

from .miniature import image

scipy_io = pytest.importorskip("scipy.io")
needs_names = pytest.mark.skipif(importlib.util.find_spec("clip_benchmark") is None, reason=f"needs {tvs.CLIP_BENCHMARK}")

DTD_CLASSES = (
    "banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted fibrous flecked freckled "
    "frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled matted meshed paisley perforated pitted "
    "pleated polka-dotted porous potholed scaly smeared spiralled sprinkled stained stratified striped studded swirly veined "
    "waffled woven wrinkled zigzagged"
).split()
EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
                   "Residential", "River", "SeaLake"]
#: MTIL's class counts (ZSCL's eleven datasets); Caltech101: torchvision drops BACKGROUND_Google, leaving 101
MTIL_CLASSES = {"FGVCAircraft": 100, "Caltech101": 101, "CIFAR100": 100, "DTD": 47, "EuroSAT": 10, "Flowers102": 102,
                "Food101": 101, "MNIST": 10, "OxfordIIITPet": 37, "StanfordCars": 196, "SUN397": 397}


def jpg(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(image(seed, 12, 10), str(path))


def registered(plugins):
    """``plugins`` with this plugin module registered (unless it is built in already)."""
    if not plugins.pm.is_registered(tvs):
        plugins.pm.register(tvs)
    return plugins


def build(root, set_name, **options):
    return tvs.build_torchvision(set=set_name, root=str(root), image_size=16, workers=0, **options)


def pairs(data):
    return sorted(zip(data.paths, data.labels.tolist()))


# --- miniature writers, one per layout (torchvision/datasets/<module>.py, 0.29) -------------------

def write_dtd(root):  # dtd.py: dtd/dtd/images/<class>/<file>, dtd/dtd/labels/{train,val,test}<partition>.txt
    base = root / "dtd" / "dtd"
    for split, k in (("train", 1), ("val", 2), ("test", 3)):
        lines = [f"{c}/{c}_{k:04d}.jpg" for c in DTD_CLASSES]
        for i, line in enumerate(lines):
            jpg(base / "images" / line, 100 * k + i)
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def write_eurosat(root, per_class=5):  # eurosat.py: an ImageFolder at eurosat/2750/<class>/*.jpg
    for c, name in enumerate(EUROSAT_CLASSES):
        for k in range(per_class):
            jpg(root / "eurosat" / "2750" / name / f"{name}_{k + 1}.jpg", 10 * c + k)


def write_flowers(root):  # flowers102.py: flowers-102/jpg/image_%05d.jpg, imagelabels.mat, setid.mat
    base = root / "flowers-102"
    labels = [1, 1, 2, 102, 5, 2]  # 1-based, for image ids 1..6
    for i in range(1, len(labels) + 1):
        jpg(base / "jpg" / f"image_{i:05d}.jpg", i)
    scipy_io.savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy_io.savemat(base / "setid.mat", {"trnid": np.array([[1, 3, 4]], np.uint16), "valid": np.array([[5]], np.uint16),
                                          "tstid": np.array([[2, 6]], np.uint16)})


def idx(data: np.ndarray) -> bytes:  # the MNIST "idx" format: 0, 0, type 8 (ubyte), ndim; big-endian dims; bytes
    return bytes([0, 0, 8, data.ndim]) + b"".join(struct.pack(">I", d) for d in data.shape) + data.astype(np.uint8).tobytes()


def write_mnist(root, n=(20, 10)):  # mnist.py: MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in zip(("train", "t10k"), n):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx(rng.integers(0, 256, (count, 28, 28))))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(np.arange(count) % 10))


def write_aircraft(root):  # fgvc_aircraft.py: fgvc-aircraft-2013b/data/variants.txt, images_variant_<split>.txt, images/<id>.jpg
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    variants = ["707-320", "Boeing 717", "F/A-18", *[f"Model {i}" for i in range(97)]]
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    for split, picks in (("train", [0, 1, 2, 1]), ("test", [2, 99])):
        ids = [f"{1000000 + 10 * len(split) + k:07d}" for k in range(len(picks))]
        for k, i in enumerate(ids):
            jpg(data / "images" / f"{i}.jpg", k)
        (data / f"images_variant_{split}.txt").write_text("".join(f"{i} {variants[p]}\n" for i, p in zip(ids, picks)))
    return variants


def write_pets(root, breeds):  # oxford_iiit_pet.py: oxford-iiit-pet/annotations/{trainval,test}.txt, images/<id>.jpg
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    for split, k in (("trainval", 1), ("test", 2)):
        lines = []
        for label, breed in enumerate(breeds, 1):
            stem = breed.replace(" ", "_") if label == 1 else breed.lower().replace(" ", "_")  # cats capitalised, dogs not
            jpg(base / "images" / f"{stem}_{k}.jpg", label)
            lines.append(f"{stem}_{k} {label} {1 if label < 3 else 2} {k}")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def write_cars(root):  # stanford_cars.py: stanford_cars/devkit/{cars_meta,cars_train_annos}.mat, cars_test_annos_withlabels.mat
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Make {i} Sedan 2012" for i in range(196)]
    scipy_io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    for split, mat, classes in (("train", base / "devkit" / "cars_train_annos.mat", [1, 196, 7]), ("test", base / "cars_test_annos_withlabels.mat", [3])):
        annos = np.zeros((1, len(classes)), dtype=[("bbox_x1", "O"), ("class", "O"), ("fname", "O")])
        for k, c in enumerate(classes):
            annos[0, k] = (np.uint8(1), np.uint8(c) if c < 256 else c, f"{k + 1:05d}.jpg")
            jpg(base / f"cars_{split}" / f"{k + 1:05d}.jpg", k)
        scipy_io.savemat(mat, {"annotations": annos})


def write_food(root):  # food101.py: food-101/meta/{train,test}.json {class: ['<class>/<id>']}, images/<class>/<id>.jpg
    base = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs", *[f"dish_{i:03d}" for i in range(99)]]
    for split, k in (("train", 1), ("test", 2)):
        meta = {c: [] for c in classes}
        meta["baby_back_ribs"] = [f"baby_back_ribs/{k}0", f"baby_back_ribs/{k}1"]
        meta["apple_pie"] = [f"apple_pie/{k}5"]
        for rels in meta.values():
            for rel in rels:
                jpg(base / "images" / f"{rel}.jpg", k)
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))


def write_sun(root):  # sun397.py: SUN397/ClassName.txt ('/a/abbey'), SUN397/<letter>/<class path>/sun_*.jpg
    base = root / "SUN397"
    base.mkdir(parents=True)
    classes = ["a/abbey", "a/apartment_building/outdoor", *[f"z/zone_{i:03d}" for i in range(395)]]
    (base / "ClassName.txt").write_text("".join(f"/{c}\n" for c in classes))
    for k in range(10):
        jpg(base / classes[k % 2] / f"sun_{k:04d}.jpg", k)


def write_caltech(root):  # caltech.py: caltech101/101_ObjectCategories/<category>/image_%04d.jpg (BACKGROUND_Google dropped)
    base = root / "caltech101" / "101_ObjectCategories"
    for c, name in enumerate(["BACKGROUND_Google", "Faces", "Faces_easy", *[f"thing_{i:03d}" for i in range(99)]]):
        for k in range(1, 3 if c < 3 else 2):
            jpg(base / name / f"image_{k:04d}.jpg", c)


def write_cifar10(root):  # cifar.py: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (python pickles)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for k, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        batch = {"batch_label": name, "labels": [(k + j) % 10 for j in range(4)], "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 "filenames": [f"{j}.png" for j in range(4)]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 4, "num_vis": 3072}, f, protocol=2)


# --- the sets, each against torchvision's own reading of the same miniature ---------------------

@needs_names
def test_dtd_matches_torchvision_and_clip_benchmark(tmp_path):
    write_dtd(tmp_path)
    data = build(tmp_path, "DTD")
    theirs = tvd.DTD(str(tmp_path), split="train")
    assert pairs(data.train) == sorted(zip(map(str, theirs._image_files), theirs._labels))
    assert data.raw_class_names == theirs.classes == DTD_CLASSES and data.class_names[30] == "polka-dotted"
    assert len(data.train) == len(data.test) == 47 and data.test.paths[0].endswith("banded_0003.jpg")
    assert data.templates == [t.replace("{c}", "{}") for t in tvs.clip_benchmark_lists()[1]["dtd"]] and data.templates[0] == "a photo of a {} texture."
    images, labels = next(data.train.batches(5))
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.uint8 and labels.tolist() == [0, 1, 2, 3, 4]
    val = build(tmp_path, "DTD", train_split="val")
    assert val.train.paths[0].endswith("banded_0002.jpg")


@needs_names
def test_eurosat_split_is_zscls_random_split(tmp_path):
    write_eurosat(tmp_path)
    data = build(tmp_path, "EuroSAT")
    assert data.class_names == tvs.clip_benchmark_lists()[0]["eurosat"] and data.class_names[2] == "brushland or shrubland"
    assert data.raw_class_names == EUROSAT_CLASSES and len(data.train) == 40 and len(data.test) == 10
    # ZSCL mtil/src/datasets/collections.py, ClassificationDataset.split_dataset, on torchvision's EuroSAT
    theirs = tvd.EuroSAT(str(tmp_path))
    train, test = torch.utils.data.random_split(theirs, [40, 10], generator=torch.Generator().manual_seed(42))
    assert pairs(data.train) == sorted(theirs.samples[i] for i in train.indices)
    assert pairs(data.test) == sorted(theirs.samples[i] for i in test.indices)
    other = build(tmp_path, "EuroSAT", split_seed=0, train_fraction=0.5)
    assert len(other.train) == 25 and pairs(other.test) != pairs(data.test)


@needs_names
def test_flowers_mat_files(tmp_path):
    write_flowers(tmp_path)
    data = build(tmp_path, "Flowers102")
    assert [p[-15:] for p in data.train.paths] == ["image_00001.jpg", "image_00003.jpg", "image_00004.jpg"]
    assert data.train.labels.tolist() == [0, 1, 101] and data.test.labels.tolist() == [0, 1]
    assert data.class_names == tvs.clip_benchmark_lists()[0]["flowers"] and data.num_classes == 102
    assert data.raw_class_names == tvd.Flowers102.classes and data.templates == ["a photo of a {}, a type of flower."]
    assert build(tmp_path, "Flowers102", train_split="val").train.labels.tolist() == [4]


@needs_names
def test_mnist_idx_files_in_memory(tmp_path):
    write_mnist(tmp_path)
    data = build(tmp_path, "MNIST")
    theirs = tvd.MNIST(str(tmp_path), train=True)
    assert data.train.images.shape == (20, 3, 28, 28) and data.train.images.dtype == torch.uint8
    assert torch.equal(data.train.images[:, 1], theirs.data) and data.train.labels.tolist() == theirs.targets.tolist()
    assert len(data.test) == 10 and data.class_names[3] == "3" and data.raw_class_names[3] == "3 - three"
    assert data.templates == ['a photo of the number: "{}".']


@needs_names
def test_aircraft_pets_cars_food_sun_caltech_cifar10_match_torchvision(tmp_path):
    variants = write_aircraft(tmp_path)
    air = build(tmp_path, "FGVCAircraft")
    theirs = tvd.FGVCAircraft(str(tmp_path), split="train")
    assert pairs(air.train) == sorted(zip(theirs._image_files, theirs._labels)) and air.class_names == variants == theirs.classes
    assert air.test.labels.tolist() == [2, 99] and len(air.templates) == 2

    breeds = tvs.clip_benchmark_lists()[0]["pets"]
    write_pets(tmp_path, breeds)
    pets = build(tmp_path, "OxfordIIITPet")
    theirs = tvd.OxfordIIITPet(str(tmp_path), split="trainval")
    assert pairs(pets.train) == sorted(zip(map(str, theirs._images), theirs._labels)) and pets.raw_class_names == theirs.classes == breeds

    write_cars(tmp_path)
    cars = build(tmp_path, "StanfordCars")
    theirs = tvd.StanfordCars(str(tmp_path), split="train")
    assert pairs(cars.train) == sorted(theirs._samples) and cars.class_names == theirs.classes and cars.train.labels.tolist() == [0, 195, 6]

    write_food(tmp_path)
    food = build(tmp_path, "Food101")
    theirs = tvd.Food101(str(tmp_path), split="test")
    assert pairs(food.test) == sorted(zip(map(str, theirs._image_files), theirs._labels))
    assert food.raw_class_names == theirs.classes and food.class_names[:2] == ["apple pie", "baby back ribs"]

    write_sun(tmp_path)
    sun = build(tmp_path, "SUN397")
    theirs = tvd.SUN397(str(tmp_path))
    assert sorted(pairs(sun.train) + pairs(sun.test)) == sorted(zip(map(str, theirs._image_files), theirs._labels))
    assert len(sun.train) == 8 and sun.class_names[1] == "apartment building outdoor" and sun.raw_class_names == theirs.classes

    write_caltech(tmp_path)
    cal = build(tmp_path, "Caltech101")
    theirs = tvd.Caltech101(str(tmp_path))
    files = [str(tmp_path / "caltech101" / "101_ObjectCategories" / theirs.categories[y] / f"image_{i:04d}.jpg") for i, y in zip(theirs.index, theirs.y)]
    split = torch.utils.data.random_split(theirs, [int(0.8 * len(files)), len(files) - int(0.8 * len(files))], generator=torch.Generator().manual_seed(42))
    assert pairs(cal.test) == sorted((files[i], theirs.y[i]) for i in split[1].indices)
    assert cal.raw_class_names == theirs.categories and cal.class_names[:2] == ["off-center face", "centered face"]
    assert cal.class_names == tvs.clip_benchmark_lists()[0]["caltech101"][1:] and cal.num_classes == 101

    write_cifar10(tmp_path)
    cifar = build(tmp_path, "CIFAR10")
    assert cifar.train.images.shape == (20, 3, 32, 32) and cifar.test.labels.tolist() == [5, 6, 7, 8]
    assert cifar.class_names[0] == "airplane" and len(cifar.templates) == 18


# --- what validate knows, and the errors ------------------------------------------------------------

@needs_names
def test_facts_know_mtils_class_counts_without_reading_data():
    for name, count in MTIL_CLASSES.items():
        facts = tvs.TorchvisionSets.facts(tvs.TorchvisionOptions(set=name).model_dump(mode="json"))
        assert facts.num_classes == count and facts.num_templates == len(tvs.templates_of(name)), name
        key = tvs.SETS[name].names
        if key:  # clip_benchmark's own list has the set's classes (Caltech101 with its 'background' first)
            assert len(tvs.clip_benchmark_lists()[0][key]) == count + (name == "Caltech101")
    level = tvs.TorchvisionOptions(set="FGVCAircraft", annotation_level="family").model_dump(mode="json")
    assert tvs.TorchvisionSets.facts(level).num_classes == 70
    assert tvs.TorchvisionSets.facts(tvs.TorchvisionOptions(set="CIFAR100").model_dump(mode="json")).train_per_class == 500


def test_missing_set_says_where_and_how(tmp_path):
    with pytest.raises(UserError) as info:
        build(tmp_path, "DTD")
    line = str(info.value)
    assert "\n" not in line and f"missing {tmp_path}/dtd/dtd/labels/train1.txt" in line and "set 'download: true'" in line
    assert line.startswith("dataset 'torchvision' set DTD not found")
    write_dtd(tmp_path)
    (tmp_path / "dtd" / "dtd" / "images" / "banded" / "banded_0001.jpg").unlink()
    with pytest.raises(UserError, match=r"train1.txt: image .*banded_0001.jpg not found; the copy is incomplete"):
        build(tmp_path, "DTD")


def test_clip_benchmark_missing_is_one_line_with_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "clip_benchmark" else real(name, *a))
    tvs.clip_benchmark_lists.cache_clear()
    try:
        with pytest.raises(UserError, match=r"clip_benchmark, which is not installed; pip install --no-deps 'clip_benchmark>=1.6.2,<1.7'"):
            build("/nowhere", "MNIST")
        assert tvs.TorchvisionSets.facts(tvs.TorchvisionOptions(set="MNIST").model_dump(mode="json")).num_templates is None
    finally:
        tvs.clip_benchmark_lists.cache_clear()


def test_suite_errors_name_the_key(tmp_path, plugins):
    from clbench.suite import load_suite

    registered(plugins)
    cases = [
        ({"set": "FGVCAircaft"}, "streams[0].set: unknown torchvision dataset 'FGVCAircaft' (did you mean 'FGVCAircraft'?); known: Caltech101,"),
        ({"set": "mnist"}, "(did you mean 'MNIST'?)"),
        ({"set": "Places365"}, "torchvision dataset 'Places365' has no CLIP class names and templates in clbench; use 'dataset: imagefolder'"),
        ({"set": "ImageNet"}, "use 'dataset: imagenet1k'"),
        ({"set": "OxfordIIITPet", "train_split": "train"}, "streams[0].train_split: OxfordIIITPet has no split 'train'; its splits: trainval, test"),
        ({"set": "SUN397", "test_split": "test"}, "SUN397 has no official splits; drop the key"),
        ({"set": "DTD", "annotation_level": "family"}, "streams[0].annotation_level: applies to FGVCAircraft only, not DTD"),
        ({"name": "DTD"}, "streams[0].set: Field required"),
        ({"set": "MNIST", "train_split": "test"}, "streams[0]: train_split and test_split are both 'test'; test on another split"),
    ]
    for options, message in cases:
        suite = {"streams": [{"dataset": "torchvision", **options}], "methods": ["zeroshot"]}
        with pytest.raises(UserError) as info:
            load_suite(write_suite(tmp_path / "s.yaml", suite), plugins)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    ok = {"streams": [{"dataset": "torchvision", "set": "DTD", "root": "/a", "steps": 47}], "methods": ["zeroshot"]}
    cell = load_suite(write_suite(tmp_path / "s.yaml", ok), plugins).cells[0]
    assert cell.config["stream"]["runtime_options"] == {"root": "/a", "download": False, "workers": None}
    too_many = {"streams": [{"dataset": "torchvision", "set": "DTD", "steps": 48}], "methods": ["zeroshot"]}
    with pytest.raises(UserError, match="48 steps but the stream has only 47 classes"):
        load_suite(write_suite(tmp_path / "s.yaml", too_many), plugins)


def test_plugin_contract(plugins):
    import tests.test_plugins as contract

    registered(plugins)
    assert plugins.datasets.get("torchvision") is tvs.TorchvisionSets
    contract.test_every_builtin_dataset_declares_options_it_has(plugins)
    contract.test_every_registered_plugin_is_a_subclass_of_its_kinds_base_named_by_its_class(plugins, "datasets")


@needs_names
def test_mnist_stream_runs_through_clbench(tmp_path, plugins):
    from clbench.api import run_suite

    write_mnist(tmp_path)
    registered(plugins)
    suite = {"name": "tv", "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "methods": ["zeroshot", "finetune"], "seeds": [0],
             "streams": [{"dataset": "torchvision", "set": "MNIST", "steps": 2, "root": str(tmp_path)}]}
    summary = run_suite(write_suite(tmp_path / "s.yaml", suite), tmp_path / "out", plugins=plugins, progress=False)
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")]
    assert summary.ok and len(records) == 2 and all(r["status"] == "done" and len(r["acc_matrix"]) == 2 for r in records)

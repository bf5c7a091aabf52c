"""The folder datasets of continual-learning papers (tinyimagenet, imagenet_r, cub200, core50) on miniature copies
written in their exact on-disk formats, built through their plugins."""
import json

import pytest
import torch

from clbench.cli import main
from clbench.data import core50, cub200, imagenet_r, tinyimagenet
from clbench.data.imagenet import read_list
from clbench.data.scenarios import build_stream, numpy_permutation
from clbench.errors import UserError
from clbench.suite import load_suite
from clbench.testing import TINY_MODEL, TINY_TRAIN, write_suite

from .miniature import write_core50, write_cub200, write_imagenet_r, write_tinyimagenet

MODULES = (tinyimagenet, imagenet_r, cub200, core50)
TINY_WNIDS = ["n02124075", "n01443537", "n04067472"]  # wnids.txt order, as a partial copy lists them


@pytest.fixture
def cl(plugins):
    """The plugin manager with the four dataset modules registered (unless they are built in already)."""
    for module in MODULES:
        if not plugins.pm.is_registered(module):
            plugins.pm.register(module)
    return plugins


def build(plugins, name, **options):
    plugin = plugins.datasets.get(name)
    return plugin.build(plugin.Options(**options).model_dump(mode="json"))


def all_labels(image_set) -> list[int]:
    return image_set.labels.tolist()


# --- Tiny ImageNet ----------------------------------------------------------------------------------

def test_tinyimagenet_as_shipped(cl, tmp_path):
    write_tinyimagenet(tmp_path, TINY_WNIDS, names={"n02124075": "Egyptian cat"}, per_split=(3, 2))
    data = build(cl, "tinyimagenet", root=str(tmp_path), image_size=16, workers=0)
    assert data.class_names == ["Egyptian Mau", "goldfish", "fishing casting reel"]  # CLIP's names, wnids.txt order
    assert data.raw_class_names == ["Egyptian cat", "thing n01443537", "thing n04067472"]  # words.txt, first synonym
    assert len(data.templates) == 80
    assert all_labels(data.train) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and data.train.paths[3].endswith("n01443537/images/n01443537_0.JPEG")
    assert all_labels(data.test) == [0, 0, 1, 1, 2, 2] and data.test.paths[0].endswith("val/images/val_0.JPEG")  # val = test
    assert data.order_names() == ["seeded"]  # a partial copy: no published order
    images, labels = next(data.test.batches(6))
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.uint8
    stream = build_stream(data, "class_incremental", 0, "t", steps=3)
    assert sorted(c for e in stream.experiences for c in e.classes) == [0, 1, 2]


def test_tinyimagenet_moe_adapters_order(cl, tmp_path):
    order = tinyimagenet.MOE_ADAPTERS_ORDER
    assert order[:5] == [131, 181, 22, 172, 144] and sorted(order) == list(range(200))  # cil/class_orders/tinyimagenet.yaml
    wnids = list(tinyimagenet.shipped_wnids())
    assert wnids[:3] == ["n02124075", "n04067472", "n04540053"] and len(set(wnids)) == 200  # dataset_reqs/tinyimagenet_classes.txt
    write_tinyimagenet(tmp_path, wnids, per_split=(1, 1))
    data = build(cl, "tinyimagenet", root=str(tmp_path), workers=0)
    assert data.num_classes == 200 and data.class_names[131] == "Persian cat" and data.class_names[22] == "goldfish"
    stream = build_stream(data, "class_incremental", 0, "t", steps=10, class_order="moe_adapters")
    assert stream.experiences[0].classes == order[:20]


def test_tinyimagenet_bad_annotation_line(cl, tmp_path):
    base = write_tinyimagenet(tmp_path, TINY_WNIDS[:2])
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01443537\t0\t0\t1\t1\nval_1.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match=r"val_annotations.txt:2: wnid n09999999 is not in wnids.txt"):
        build(cl, "tinyimagenet", root=str(tmp_path))


# --- ImageNet-R -------------------------------------------------------------------------------------

R_WNIDS = ["n01443537", "n01484850", "n12267677"]  # goldfish, great white shark, acorn


def split_entries(base, name):
    lines = (base / name).read_text().split("targets:")[0].splitlines()[1:]
    return [tuple(line[2:].split("/")[-2:]) for line in lines]


def test_imagenet_r_coda_split_files(cl, tmp_path):
    base = write_imagenet_r(tmp_path, R_WNIDS)
    data = build(cl, "imagenet_r", root=str(tmp_path), image_size=16, workers=0)
    assert data.class_names == ["goldfish", "great white shark", "acorn"] and len(data.templates) == 80
    train, test = split_entries(base, "imagenet-r_train.yaml"), split_entries(base, "imagenet-r_test.yaml")
    assert (len(data.train), len(data.test)) == (len(train), len(test)) == (12, 3)  # CODA-Prompt's 80/20
    assert all_labels(data.train) == [R_WNIDS.index(w) for w, _ in train]  # sorted-wnid ids, not the files' targets
    assert [p.split("/")[-2:] for p in data.test.paths] == [list(e) for e in test]
    assert data.order_names() == ["seeded"]
    assert len(build_stream(data, "class_incremental", 0, "r", steps=1).experiences[0].test) == 3


def test_imagenet_r_split_files_must_agree(cl, tmp_path):
    base = write_imagenet_r(tmp_path, R_WNIDS)
    (base / "imagenet-r_test.yaml").unlink()
    with pytest.raises(UserError, match=r"imagenet-r_test.yaml: split file missing; put CODA-Prompt's imagenet-r_test.yaml"):
        build(cl, "imagenet_r", root=str(tmp_path))
    base = write_imagenet_r(tmp_path / "b", R_WNIDS)
    text = (base / "imagenet-r_train.yaml").read_text().replace("n12267677/", "n15075141/", 1)
    (base / "imagenet-r_train.yaml").write_text(text)
    with pytest.raises(UserError, match=r"entry \d+: 'n15075141' is not one of ImageNet-R's 200 classes"):
        build(cl, "imagenet_r", root=str(tmp_path / "b"))


def test_imagenet_r_presplit_folders_and_pycil_order(cl, tmp_path):
    wnids = list(imagenet_r.imagenet_r_wnids())
    assert len(wnids) == 200 and wnids[:2] == ["n01443537", "n01484850"] and wnids[-1] == "n12267677"  # hendrycks eval.py
    assert set(wnids) <= set(read_list("imagenet1k_wnids.txt"))
    write_imagenet_r(tmp_path, wnids, per_class=2, split="folders")
    data = build(cl, "imagenet_r", root=str(tmp_path), split="folders", workers=0)
    assert data.num_classes == 200 and (len(data.train), len(data.test)) == (200, 200)
    assert data.train.paths[0].endswith("imagenet-r/train/n01443537/sketch_1.jpg")
    assert data.class_order(0, "pycil")[:5] == [168, 136, 51, 9, 183] == numpy_permutation(200, 1993)[:5]


# --- CUB-200-2011 -----------------------------------------------------------------------------------

def test_cub200_official_split(cl, tmp_path):
    write_cub200(tmp_path, per_split=(3, 2))
    data = build(cl, "cub200", root=str(tmp_path), image_size=16, workers=0)
    assert data.class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert data.raw_class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    assert data.templates == ["a photo of a {}, a type of bird."]
    assert all_labels(data.train) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and all_labels(data.test) == [0, 0, 1, 1, 2, 2]
    assert data.test.paths[0].endswith("images/001.Black_footed_Albatross/Black_footed_Albatross_0003_4.jpg")
    assert data.order_names() == ["seeded"]
    assert data.train.load(torch.arange(2)).shape == (2, 3, 16, 16)


def test_cub200_pycil_order_with_all_classes(cl, tmp_path):
    write_cub200(tmp_path, classes=[f"{k:03d}.Bird_{k}" for k in range(1, 201)], per_split=(1, 1))
    data = build(cl, "cub200", root=str(tmp_path), workers=0)
    assert data.num_classes == 200 and data.class_names[199] == "Bird 200" and (len(data.train), len(data.test)) == (200, 200)
    stream = build_stream(data, "class_incremental", 0, "c", steps=20, class_order="pycil")
    assert stream.experiences[0].classes[:5] == [168, 136, 51, 9, 183] and stream.class_order == numpy_permutation(200, 1993)


@pytest.mark.parametrize("file, text, message", [
    ("images.txt", "1 001.Black_footed_Albatross\n", r"images.txt: image 1: path '001.Black_footed_Albatross' is not '<class folder>/<file>'"),
    ("train_test_split.txt", "1 2\n", r"train_test_split.txt:1: malformed line '1 2'"),
    ("image_class_labels.txt", "1 2\n", r"image 1 is in folder '001.Black_footed_Albatross' but its class 2 is '002.Laysan_Albatross'"),
    ("image_class_labels.txt", "", r"images.txt: image 1 has no line in image_class_labels.txt"),
])
def test_cub200_index_files_must_agree(cl, tmp_path, file, text, message):
    base = write_cub200(tmp_path)
    lines = (base / file).read_text().splitlines()
    (base / file).write_text(text + "\n".join(lines[1:]) + "\n")
    with pytest.raises(UserError, match=message):
        build(cl, "cub200", root=str(tmp_path))


# --- CORe50 -----------------------------------------------------------------------------------------

def test_core50_sessions_as_domains(cl, tmp_path):
    write_core50(tmp_path, objects=(1, 6, 11), frames=2)
    data = build(cl, "core50", root=str(tmp_path), image_size=16, workers=0)
    assert data.domain_names == ["s1", "s2", "s4", "s5", "s6", "s8", "s9", "s11"] and data.num_classes == 50
    assert data.class_names[:2] == ["plug adapter 1", "plug adapter 2"] and data.raw_class_names[5] == "mobile_phone1"
    assert len(data.train) == 8 * 3 * 2 and all_labels(data.train)[:6] == [0, 0, 5, 5, 10, 10]
    assert data.train.domains.tolist() == [d for d in range(8) for _ in range(6)]
    assert "/s1/o1/C_01_01_000.png" in data.train.paths[0] and "/s11/" in data.train.paths[-1]
    held_out = sorted({p.split("core50_128x128/")[1].split("/")[0] for p in data.test.paths})
    assert held_out == ["s10", "s3", "s7"] and len(data.test) == 3 * 3 * 2 and data.test.domains is None
    stream = build_stream(data, "domain_incremental", 0, "c")
    assert [e.domain for e in stream.experiences] == data.domain_names
    assert all(len(e.train) == 6 and len(e.test) == 18 and sorted(set(all_labels(e.test))) == [0, 5, 10] for e in stream.experiences)
    assert all(e.test is stream.experiences[0].test for e in stream.experiences)  # every step: the one held-out set
    picked = build_stream(data, "domain_incremental", 0, "c", domains=["s11", "s2"])
    assert [e.domain for e in picked.experiences] == ["s11", "s2"] and len(picked.experiences[1].test) == 18


def test_core50_categories(cl, tmp_path):
    write_core50(tmp_path, objects=(1, 5, 6, 50), frames=1)
    data = build(cl, "core50", root=str(tmp_path), classification="category", workers=0)
    assert data.num_classes == 10 and data.class_names[:2] == ["plug adapters", "mobile phones"]
    assert data.raw_class_names[9] == "remote_control" and all_labels(data.train)[:4] == [0, 0, 1, 9]
    assert core50.Core50.facts({"classification": "category"}).num_classes == 10


def test_core50_layout_errors(cl, tmp_path):
    base = write_core50(tmp_path, objects=(1,), frames=1)
    (base / "s4" / "o1" / "C_04_01_000.png").rename(base / "s4" / "o1" / "C_05_01_000.png")
    with pytest.raises(UserError, match=r"C_05_01_000.png: frame of session 5, object 1 in the folder of s4/o1"):
        build(cl, "core50", root=str(tmp_path))
    base = write_core50(tmp_path / "b", objects=(1,), frames=1, sessions=[s for s in range(1, 12) if s != 7])
    with pytest.raises(UserError, match=r"s7: session folder missing; core50 needs all 11 sessions"):
        build(cl, "core50", root=str(tmp_path / "b"))


def test_core50_runs_domain_incremental_through_clbench_run(cl, tmp_path, capsys):
    write_core50(tmp_path, objects=(1, 6), frames=1)
    stream = {"dataset": "core50", "scenario": "domain_incremental", "root": str(tmp_path), "workers": 0,
              "domains": ["s1", "s11"], "classification": "category"}
    suite = {"name": "c", "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "streams": [stream],
             "methods": ["zeroshot", "finetune"], "seeds": [0]}
    path = write_suite(tmp_path / "c.yaml", suite)
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results", str(tmp_path / "out")], plugins=cl)
    assert info.value.code == 0, capsys.readouterr().err
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")]
    assert len(records) == 2 and all([e["domain"] for e in r["experiences"]] == ["s1", "s11"] for r in records)
    assert all(e["test_size"] == 6 for r in records for e in r["experiences"])  # s3, s7, s10 x 2 objects


# --- every dataset ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("tinyimagenet", r"dataset 'tinyimagenet' not found at {root}/tiny-imagenet-200 \(data root .*\); get tiny-imagenet-200.zip from http"),
    ("imagenet_r", r"dataset 'imagenet_r' not found at {root}/imagenet-r \(data root .*\); get imagenet-r.tar from https"),
    ("cub200", r"dataset 'cub200' not found at {root}/CUB_200_2011 \(data root .*\); get CUB_200_2011.tgz \(https"),
    ("core50", r"dataset 'core50' not found at {root}/core50_128x128 \(data root .*\); get core50_128x128.zip from http"),
])
def test_missing_dataset_is_one_line(cl, tmp_path, name, message):
    with pytest.raises(UserError, match=message.format(root=tmp_path)) as info:
        build(cl, name, root=str(tmp_path))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=rf"dataset '{name}' not found at {tmp_path}/elsewhere \(stream 'path'\)"):
        build(cl, name, root=str(tmp_path), path="elsewhere")


def test_path_names_the_folder_itself(cl, tmp_path):
    write_cub200(tmp_path / "birds")
    data = build(cl, "cub200", path=str(tmp_path / "birds" / "CUB_200_2011"), workers=0)
    assert data.num_classes == 3


def test_validate_knows_each_dataset_without_reading_data(cl, tmp_path):
    streams = [
        {"dataset": "tinyimagenet", "steps": 10, "class_order": "moe_adapters"},
        {"dataset": "imagenet_r", "steps": 10, "class_order": "pycil", "split": "folders"},
        {"dataset": "cub200", "steps": 10, "class_order": "pycil"},
        {"dataset": "core50", "scenario": "domain_incremental", "domains": ["s11", "s1"], "classification": "category"},
    ]
    suite = {"name": "v", "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "streams": streams, "methods": ["zeroshot"],
             "seeds": [0]}
    loaded = load_suite(write_suite(tmp_path / "v.yaml", suite), plugins=cl)  # no data under any root: nothing is read
    assert len(loaded.cells) == 4
    bad = dict(suite, streams=[{"dataset": "core50", "scenario": "domain_incremental", "domains": ["s3"]}])
    with pytest.raises(UserError, match=r"domains.*s3"):  # a held-out test session is not a domain
        load_suite(write_suite(tmp_path / "bad.yaml", bad), plugins=cl)

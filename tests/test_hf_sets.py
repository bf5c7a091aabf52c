"""The huggingface dataset plugin on tiny datasets written with the datasets library itself (save_to_disk)."""
import json
import sys

import numpy as np
import pytest
import torch

import clbench.data.hf_sets as hfs
from clbench.errors import UserError
from clbench.testing import TINY_MODEL, TINY_TRAIN, write_suite

datasets = pytest.importorskip("datasets")
from PIL import Image as PILImage  # noqa: E402

NAMES = ["red_apple", "green_pear", "blue_car"]


def write_hf(folder, label_feature=None, n=(6, 3)):
    """A DatasetDict (train, test) of PNGs of three solid colours, sizes 20x30 and 30x20, one grey and one palette image."""
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    splits = {}
    for split, count in zip(("train", "test"), n):
        images, labels = [], []
        for k in range(count):
            label = k % 3
            im = PILImage.new("RGB", (20, 30) if k % 2 else (30, 20), colours[label])
            if split == "train" and k == 3:
                im = im.convert("P")  # palette: converted to RGB on decode
            if split == "train" and k == 5:
                im = im.convert("L")  # grey: three equal channels on decode
            images.append(im)
            labels.append(label)
        features = datasets.Features({"image": datasets.Image(), "label": label_feature or datasets.ClassLabel(names=NAMES)})
        splits[split] = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    splits["test"] = splits["test"].add_column("grey", [0] * n[1])
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def registered(plugins):
    """``plugins`` with this plugin module registered (unless it is built in already)."""
    if not plugins.pm.is_registered(hfs):
        plugins.pm.register(hfs)
    return plugins


def build(path, **options):
    return hfs.build_huggingface(path=str(path), image_size=16, workers=0, **options)


def test_save_to_disk_folder_with_classlabel_names(tmp_path):
    data = build(write_hf(tmp_path / "fruit"))
    assert data.class_names == ["red apple", "green pear", "blue car"] and data.raw_class_names == NAMES
    assert data.templates == ["a photo of a {}."] and len(data.train) == 6 and len(data.test) == 3
    images, labels = next(data.train.batches(6))
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.uint8 and labels.tolist() == [0, 1, 2, 0, 1, 2]
    centre = images[:, :, 8, 8]
    assert (centre[[0, 3], 0] > 240).all() and (centre[[0, 3], 1:] < 10).all()  # red, the palette one too
    assert (centre[2, 2] > 240).all() and data.train.load(torch.tensor([1])).shape == (1, 3, 16, 16)
    assert 20 < centre[5, 0] < 40 and centre[5].tolist() == [centre[5, 0].item()] * 3  # grey blue, L = 0.114 * 250
    assert data.train.stored_bytes() > 6 * 8 and data.train.ids.tolist() == list(range(6))


def test_subsets_concat_state_and_worker_processes(tmp_path):
    data = build(write_hf(tmp_path / "fruit"))
    part = data.train.subset(torch.tensor([4, 1])).concat(data.train.subset(torch.tensor([0])))
    assert part.labels.tolist() == [1, 1, 0] and part.ids.tolist() == [4, 1, 0]
    again = hfs.HFImageSet.from_state(part.state())
    assert torch.equal(again.load(torch.arange(3)), part.load(torch.arange(3))) and again.ids.tolist() == [4, 1, 0]
    with pytest.raises(ValueError, match="same Hugging Face split"):
        data.train.concat(data.test)
    parallel = hfs.HFImageSet(data.train.table, data.train.source, data.train.rows, data.train.labels, 16, workers=2)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(data.train.batches(4), parallel.batches(4)))


def test_relative_path_below_root_and_class_names_option(tmp_path):
    write_hf(tmp_path / "ints", label_feature=datasets.Value("int64"))
    with pytest.raises(UserError, match=r"label_column: column 'label' is Value, not a ClassLabel; give the class names as 'class_names'"):
        build("ints", root=str(tmp_path))
    data = build("ints", root=str(tmp_path), class_names=["apple", "pear", "car"], templates=["a {} on a table."])
    assert data.class_names == ["apple", "pear", "car"] and data.templates == ["a {} on a table."]
    with pytest.raises(UserError, match=r"label_column: split 'train' has label 2 outside 0..1"):
        build("ints", root=str(tmp_path), class_names=["apple", "pear"])


@pytest.mark.parametrize("options, message", [
    ({"image_column": "img"}, "image_column: no column 'img' in split 'train'; its columns: image, label"),
    ({"label_column": "fine_label"}, "label_column: no column 'fine_label' in split 'train'; its columns: image, label"),
    ({"test_split": "validation"}, "test_split: no split 'validation'; its splits: train, test"),
    ({"test_split": "test", "image_column": "grey"}, "image_column: no column 'grey' in split 'train'"),
    ({"class_names": ["a", "b"]}, "class_names: 2 names, but column 'label' has 3 classes"),
])
def test_wrong_keys_give_one_line_naming_the_key(tmp_path, options, message):
    write_hf(tmp_path / "fruit")
    with pytest.raises(UserError) as info:
        build(tmp_path / "fruit", **options)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_missing_sources_and_package(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"huggingface: path '.*nowhere' not found; point 'path' \(and 'root'\) at a folder written by"):
        build(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"path '.*empty' is not a saved dataset"):
        build(tmp_path / "empty")
    with pytest.raises(UserError) as info:  # conftest sets HF_HUB_OFFLINE=1: a name the cache lacks cannot load
        hfs.build_huggingface(hub="nobody/no_such_dataset", cache_dir=str(tmp_path / "cache"))
    line = str(info.value)
    assert "\n" not in line and "hub dataset 'nobody/no_such_dataset' could not be loaded" in line and "HF_HUB_OFFLINE=1" in line
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(UserError, match=r"needs the datasets package, which is not installed; pip install 'datasets>=2.19,<6'"):
        build(tmp_path / "nowhere")


def test_suite_keys(tmp_path, plugins):
    from clbench.suite import load_suite

    registered(plugins)

    def cell(**stream):
        suite = {"streams": [{"dataset": "huggingface", **stream}], "methods": ["zeroshot"]}
        return load_suite(write_suite(tmp_path / "s.yaml", suite), plugins).cells[0]

    for stream, message in [({}, "give exactly one of 'path'"), ({"path": "a", "hub": "b/c"}, "give exactly one of 'path'"),
                            ({"path": "a", "revision": "main"}, "'hub_config' and 'revision' apply to a 'hub' dataset only"),
                            ({"path": "a", "templates": ["a photo"]}, "streams[0].templates: Value error, each template needs '{}' exactly once"),
                            ({"path": "a", "class_names": ["x", "y"], "steps": 3}, "3 steps but the stream has only 2 classes")]:
        with pytest.raises(UserError) as info:
            cell(**stream)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    # where the data is (path, root, cache_dir) never changes a cell's id; which Hub dataset it is does
    assert cell(path="/a/x").cell_id == cell(path="/b/y", root="/r", cache_dir="/c").cell_id
    assert cell(hub="me/birds").cell_id != cell(hub="me/cars").cell_id


def test_plugin_contract(plugins):
    import tests.test_plugins as contract

    registered(plugins)
    assert plugins.datasets.get("huggingface") is hfs.HuggingFace
    contract.test_every_builtin_dataset_declares_options_it_has(plugins)
    contract.test_every_registered_plugin_is_a_subclass_of_its_kinds_base_named_by_its_class(plugins, "datasets")


def test_stream_runs_through_clbench(tmp_path, plugins):
    from clbench.api import run_suite

    write_hf(tmp_path / "fruit")
    registered(plugins)
    suite = {"name": "hf", "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "methods": ["zeroshot", "finetune"], "seeds": [0],
             "streams": [{"dataset": "huggingface", "path": str(tmp_path / "fruit"), "steps": 3, "workers": 0}]}
    summary = run_suite(write_suite(tmp_path / "s.yaml", suite), tmp_path / "out", plugins=plugins, progress=False)
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")]
    assert summary.ok and len(records) == 2 and all(r["status"] == "done" and len(r["acc_matrix"]) == 3 for r in records)
    assert records[0]["config"]["stream"]["runtime_options"]["path"] == str(tmp_path / "fruit")
    assert np.isfinite([v for r in records for row in r["acc_matrix"] for v in row if v is not None]).all()

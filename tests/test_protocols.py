"""Published protocols: class orders, ImageNet-100 subsets and prompts, each checked against its cited source."""
import json
from pathlib import Path

import numpy as np
import pytest

from clbench.cli import main
from clbench.data.cifar import ICARL_ORDER, build_cifar100
from clbench.data.imagenet import read_list, subset_wnids
from clbench.data.scenarios import build_stream, numpy_permutation
from clbench.data.synthetic import build_synthetic
from clbench.errors import UserError
from clbench.suite import load_suite
from clbench.testing import TINY_MODEL, TINY_TRAIN, TINY_STREAM, tiny_suite, write_suite

from .miniature import write_cifar100

SUITES = Path(__file__).parent.parent / "suites"
CONTINUAL_CLIP = {"templates": ["a bad photo of a {}."], "class_names": "raw"}


# --- orders and subsets against their sources ------------------------------------

def test_icarl_order_is_podnets_copy_of_icarls():
    # arthurdouillard/incremental_learning.pytorch inclearn/lib/data/datasets.py, iCIFAR100.class_order
    assert ICARL_ORDER[:10] == [87, 0, 52, 58, 44, 91, 68, 97, 51, 15]
    assert ICARL_ORDER[-5:] == [55, 54, 26, 35, 39] and sorted(ICARL_ORDER) == list(range(100))


def test_numpy_1993_permutation_is_pycils_and_podnets_order():
    # PyCIL utils/data_manager.py: np.random.seed(1993); np.random.permutation(100);
    # PODNet options/data/imagenet100_1order.yaml starts with the same entries
    state = np.random.get_state()
    order = numpy_permutation(100, 1993)
    assert order[:10] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76] and order[-3:] == [49, 57, 33]
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global numpy state is left alone
    np.random.seed(1993)
    assert np.random.permutation(100).tolist() == order
    np.random.set_state(state)


def test_podnet_subset_is_its_val_100_labels():
    # imagenet_split/val_100.txt: "val/n01440764/... 0", "val/n01443537/... 1", ..., "val/n01855672/... 99"
    subset = subset_wnids("podnet")
    assert subset[:3] == ["n01440764", "n01443537", "n01484850"]
    assert subset[55:58] == ["n01729977", "n01734418", "n01735189"] and subset[-2:] == ["n01855032", "n01855672"]


def test_ucir_subset_is_gen_imagenet_subset():
    # hshustc/CVPR19_Incremental_Learning imagenet-class-incremental/gen_imagenet_subset.py:
    # np.random.seed(1993); np.random.choice(ImageFolder(train).classes, 100, replace=False)
    classes = read_list("imagenet1k_wnids.txt")
    chosen = np.random.RandomState(1993).choice(classes, 100, replace=False).tolist()
    assert chosen[:3] == ["n01729322", "n01514668", "n04550184"]
    assert subset_wnids("ucir") == sorted(chosen)  # ImageFolder over the copied subset numbers them sorted
    with pytest.raises(ValueError, match="unknown ImageNet-100 subset 'mine'"):
        subset_wnids("mine")


def test_seed_1993_is_seeded_by_default_and_named_orders_are_asked_for(tmp_path):
    write_cifar100(tmp_path)
    data = build_cifar100(root=str(tmp_path))
    seeded = build_stream(data, "class_incremental", 1993, "c", steps=10)
    assert seeded.class_order == data.class_order(1993) != ICARL_ORDER
    assert build_stream(data, "class_incremental", 1993, "c", steps=10, class_order="seeded").class_order == seeded.class_order
    assert build_stream(data, "class_incremental", 0, "c", steps=10, class_order="pycil").class_order == numpy_permutation(100, 1993)
    with pytest.raises(UserError, match="s.class_order: dataset 'cifar100' has no order 'podnet'; known: seeded, icarl, pycil"):
        build_stream(data, "class_incremental", 0, "c", steps=10, class_order="podnet", where="s")


# --- prompts --------------------------------------------------------------------

def test_continual_clip_prompts_on_cifar100(tmp_path):
    write_cifar100(tmp_path)
    data = build_cifar100(root=str(tmp_path))
    stream = build_stream(data, "class_incremental", 0, "c", steps=10, class_order="icarl", prompts=CONTINUAL_CLIP)
    assert stream.dataset.templates == ["a bad photo of a {}."]
    assert stream.dataset.prompts(1) == ["a bad photo of a aquarium_fish."]
    assert stream.experiences[0].classes == ICARL_ORDER[:10]
    assert data.templates != stream.dataset.templates and data.class_names[1] == "aquarium fish"  # the source is untouched


@pytest.mark.parametrize(
    "prompts, message",
    [
        ({"templates": ["a photo"]}, r"s.prompts.templates: template 'a photo' must hold exactly one '\{\}'"),
        ({"templates": ["a {c}."]}, r"not '\{c\}'"),
        ({"class_names": "raw"}, "s.prompts.class_names: dataset 'synthetic' offers no raw class names; use 'clip'"),
    ],
)
def test_bad_prompts_at_build_time(prompts, message):
    data = build_synthetic(num_classes=4, train_per_class=2, test_per_class=1, world_domains=["clean"])
    with pytest.raises(UserError, match=message):
        build_stream(data, "class_incremental", 0, "s", steps=2, prompts=prompts, where="s")


# --- suites: validation, resolved config, cell ids ------------------------------------

def validate(tmp_path, capsys, stream):
    path = write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], streams=[stream]))
    with pytest.raises(SystemExit) as info:
        main(["validate", str(path)])
    out, err = capsys.readouterr()
    return info.value.code, out, err.strip()


@pytest.mark.parametrize(
    "stream, message",
    [
        ({**TINY_STREAM, "class_order": "icarl"}, "streams[0].class_order: dataset 'synthetic' has no order 'icarl'; known: seeded"),
        ({"dataset": "cifar100", "steps": 10, "class_order": "icral"}, "has no order 'icral' (did you mean 'icarl'?); known: seeded, icarl, pycil"),
        ({"dataset": "cifar100", "class_order": [0, 1, 2]}, "streams[0].class_order: must be a permutation of 0..99 for dataset 'cifar100'"),
        ({"dataset": "cifar100", "class_order": 7}, "streams[0].class_order: Value error, must be an order's name"),
        ({"dataset": "imagenet100", "steps": 10}, "streams[0].subset: Field required"),
        ({"dataset": "imagenet100", "subset": "podnet", "class_order": "ucir"}, "has no order 'ucir'; known: seeded, podnet"),
        ({"dataset": "imagenet100", "subset": "pycil"}, "streams[0].subset: Input should be 'podnet' or 'ucir'"),
        ({**TINY_STREAM, "prompts": {"templates": ["a photo"]}}, "streams[0].prompts.templates: Value error, template 'a photo' must hold exactly one"),
        ({**TINY_STREAM, "prompts": {"templates": []}}, "streams[0].prompts.templates: List should have at least 1 item"),
        ({**TINY_STREAM, "prompts": {"template": ["a {}."]}}, "streams[0].prompts.template: unknown key (did you mean 'templates'?)"),
        ({**TINY_STREAM, "prompts": {"class_names": "raw"}}, "streams[0].prompts.class_names: dataset 'synthetic' offers no raw class names"),
        ({**TINY_STREAM, "prompts": {"class_names": "pretty"}}, "streams[0].prompts.class_names: Input should be 'clip' or 'raw'"),
    ],
)
def test_validate_rejects_unknown_orders_subsets_and_prompts(tmp_path, capsys, stream, message):
    code, _, err = validate(tmp_path, capsys, stream)
    assert code == 2 and "\n" not in err and message in err, err


def test_defaults_written_out_keep_the_cell_and_stay_out_of_the_config(tmp_path, plugins):
    def cell(**keys):
        stream = {**TINY_STREAM, **keys}
        return load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], streams=[stream])), plugins).cells[0]

    plain = cell()
    assert set(plain.config["stream"]) == {"dataset", "scenario", "steps", "class_order", "domains", "holdout_classes", "options",
                                           "runtime_options"}  # runtime_options never enter the cell id
    assert plain.config["stream"]["class_order"] is None
    assert cell(class_order="seeded").cell_id == plain.cell_id
    assert cell(prompts={"class_names": "clip"}).cell_id == plain.cell_id
    named = cell(prompts={"templates": ["a {}."]})
    assert named.cell_id != plain.cell_id and named.config["stream"]["prompts"] == {"templates": ["a {}."]}


def test_named_order_goes_into_the_resolved_config(tmp_path, plugins):
    ids = {}
    for order in (None, "icarl", "pycil"):
        stream = {"dataset": "cifar100", "steps": 10, **({"class_order": order} if order else {})}
        c = load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(["zeroshot"], streams=[stream])), plugins).cells[0]
        assert c.config["stream"]["class_order"] == order
        ids[order] = c.cell_id
    assert len(set(ids.values())) == 3


def test_continual_clip_suite_validates_offline(capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate", str(SUITES / "continual_clip.yaml")])
    out, _ = capsys.readouterr()
    assert info.value.code == 0 and "1 cells" in out
    (cell,) = load_suite(SUITES / "continual_clip.yaml").cells
    assert cell.method == "zeroshot" and cell.seed == 0
    assert cell.config["model"] == {"arch": "ViT-B-16", "pretrained": "openai"} and cell.config["train"]["amp"] == "fp16"
    stream = cell.config["stream"]
    assert (stream["dataset"], stream["steps"], stream["class_order"]) == ("cifar100", 10, "icarl")
    assert stream["prompts"] == CONTINUAL_CLIP
    header = (SUITES / "continual_clip.yaml").read_text()
    assert all(figure in header for figure in ("75.17", "66.72", "66.95", "docs/openclip_results.csv"))


def test_protocol_runs_and_its_record_names_the_order(tmp_path, capsys):
    write_cifar100(tmp_path)
    stream = {"dataset": "cifar100", "steps": 2, "root": str(tmp_path), "class_order": "icarl", "prompts": CONTINUAL_CLIP}
    suite = {"name": "cc", "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "streams": [stream], "methods": ["zeroshot"]}
    path = write_suite(tmp_path / "cc.yaml", suite)
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results", str(tmp_path / "out")])
    assert info.value.code == 0, capsys.readouterr().err
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")]
    assert record["status"] == "done" and record["class_order"] == ICARL_ORDER
    assert record["config"]["stream"]["class_order"] == "icarl" and record["config"]["stream"]["prompts"] == CONTINUAL_CLIP

"""The dataset-incremental scenario: datasets merged side by side, MTIL's and X-TAIL's label spaces, MTIL's metrics."""
import pytest
import torch

from clbench.data.base import Dataset, InMemoryImageSet
from clbench.data.files import image_set_from_state
from clbench.data.scenarios import build_stream
from clbench.data.sequence import MergedImageSet, merge_datasets
from clbench.errors import UserError
from clbench.metrics import compute_metrics, mtil_avg, mtil_last, transfer


def tiny(name, n_classes, side, value, templates):
    """A dataset of ``n_classes`` classes, 2 train and 1 test image each, every pixel ``value + label``."""
    def split(per):
        labels = torch.arange(n_classes).repeat_interleave(per)
        images = (value + labels).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, side, side).contiguous()
        return InMemoryImageSet(images, labels)
    return Dataset(name, [f"{name} {c}" for c in range(n_classes)], templates, split(2), split(1))


@pytest.fixture
def merged():
    digits = tiny("digits", 2, 28, 10, ["a photo of the number: {}."])
    pets = tiny("pets", 3, 32, 100, ["a photo of a {}, a type of pet.", "a {} pet."])
    return merge_datasets([("digits", digits), ("pets", pets)], size=32)


def test_classes_are_laid_side_by_side_with_their_own_templates(merged):
    assert merged.class_names == ["digits 0", "digits 1", "pets 0", "pets 1", "pets 2"]
    assert merged.domain_names == ["digits", "pets"]
    assert merged.train.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert merged.prompts(1) == ["a photo of the number: digits 1."]
    assert merged.prompts(4) == ["a photo of a pets 2, a type of pet.", "a pets 2 pet."]
    # a stream's prompts.templates replace every class's own
    assert merged.with_prompts(["{}"]).prompts(4) == ["pets 2"]


def test_every_batch_comes_at_the_common_size_whatever_its_dataset(merged):
    mixed = merged.train.load(torch.tensor([9, 0]))  # a pets image (32 px) and a digits image (28 px)
    assert mixed.shape == (2, 3, 32, 32)
    assert mixed[0].unique().tolist() == [102] and mixed[1].unique().tolist() == [10]  # flat images stay flat
    digits = merged.train.where(domains=[0])
    images, labels = next(digits.batches(8))  # one dataset of 28 px: resized too, so replayed pets images can join it
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1]
    assert merged.train.load(torch.tensor([0])).shape == (1, 3, 32, 32)
    pets = merged.test.where(domains=[1])
    images, labels, ids = next(pets.batches(8, with_ids=True))
    assert labels.tolist() == [2, 3, 4] and images[:, 0, 0, 0].tolist() == [100, 101, 102]


def test_shuffled_batches_of_one_dataset_keep_labels_with_their_images(merged):
    pets = merged.train.where(domains=[1])
    seen = []
    for images, labels in pets.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert (images[:, 0, 0, 0].long() - 100 + 2 == labels).all()  # pixel value encodes the local label
        seen += labels.tolist()
    assert sorted(seen) == [2, 2, 3, 3, 4, 4]


def test_a_merged_set_survives_its_checkpoint_state_holding_only_its_own_images(merged):
    part = merged.train.subset(torch.tensor([8, 1, 5]))
    state = part.state()
    back = image_set_from_state(state)
    assert isinstance(back, MergedImageSet)
    assert back.labels.tolist() == part.labels.tolist() == [4, 0, 2]
    assert torch.equal(back.load(torch.arange(3)), part.load(torch.arange(3)))
    assert sum(len(p["labels"]) for p in state["parts"]) == 3  # the three images, not every training image


def test_a_memory_restored_from_a_checkpoint_joins_the_live_stream_s_images(merged):
    """On resume a replay memory is read back (its parts are new objects) and joined with the stream's next images."""
    restored = image_set_from_state(merged.train.subset(torch.tensor([9, 0])).state())
    live = merged.train.subset(torch.tensor([2, 3]))
    joined = restored.concat(live)
    assert joined.labels.tolist() == [4, 0, 1, 1]
    assert torch.equal(joined.load(torch.arange(4)), merged.train.load(torch.tensor([9, 0, 2, 3])))
    again = joined.concat(live).subset(torch.tensor([0, 4]))  # joins never pile up unused parts
    assert again.labels.tolist() == [4, 1] and len(again.parts) <= 2
    assert merged.train.subset(torch.tensor([0])).concat(live).parts == merged.train.parts[:1]  # one shared part, once


@pytest.mark.parametrize("space, expected", [
    ("dataset", {(0, 0): [0, 1], (0, 1): [2, 3, 4], (1, 0): [0, 1], (1, 1): [2, 3, 4]}),  # MTIL: its own dataset
    ("all", {(0, 0): [0, 1, 2, 3, 4], (0, 1): [0, 1, 2, 3, 4], (1, 0): [0, 1, 2, 3, 4], (1, 1): [0, 1, 2, 3, 4]}),  # X-TAIL
])
def test_label_spaces(merged, space, expected):
    stream = build_stream(merged, "dataset_incremental", 0, "seq", label_space=space)
    assert [e.classes for e in stream.experiences] == [[0, 1], [2, 3, 4]]
    assert [e.domain for e in stream.experiences] == ["digits", "pets"]
    assert stream.seen(0) == [0, 1] and stream.seen(1) == [0, 1, 2, 3, 4]
    assert {(t, j): stream.eval_classes(t, j) for t in (0, 1) for j in (0, 1)} == expected


def test_a_dataset_incremental_stream_refuses_what_it_cannot_do(merged):
    with pytest.raises(UserError, match="one step per dataset"):
        build_stream(merged, "dataset_incremental", 0, "seq", steps=3)
    with pytest.raises(UserError, match="keeps no control set"):
        build_stream(merged, "dataset_incremental", 0, "seq", holdout_classes=1)
    single = tiny("one", 3, 8, 0, ["{}"])
    with pytest.raises(UserError, match="not a sequence of datasets"):
        build_stream(single, "dataset_incremental", 0, "seq")
    with pytest.raises(ValueError, match="at least two"):
        merge_datasets([("one", single)], 8)


def test_mtil_metrics_by_hand():
    A = [[0.9, 0.3, 0.2],
         [0.8, 0.7, 0.4],
         [0.6, 0.5, 0.8]]
    # Transfer: column 1 -> mean(0.3) = 0.3; column 2 -> mean(0.2, 0.4) = 0.3; mean = 0.3
    assert transfer(A) == pytest.approx(0.3)
    # Avg: column means (0.9+0.8+0.6)/3, (0.3+0.7+0.5)/3, (0.2+0.4+0.8)/3 = 0.7667, 0.5, 0.4667 -> mean 0.5778
    assert mtil_avg(A) == pytest.approx((2.3 / 3 + 1.5 / 3 + 1.4 / 3) / 3)
    assert mtil_last(A) == pytest.approx((0.6 + 0.5 + 0.8) / 3)
    metrics = compute_metrics(A, [10, 10, 10])
    assert metrics["transfer"] == pytest.approx(0.3) and metrics["mtil_last"] == metrics["avg_acc"]
    missing = [[0.9, None], [0.8, 0.7]]
    assert transfer(missing) is None and mtil_avg(missing) is None and transfer([[0.5]]) is None


# --- suites: validation and a miniature MTIL run through the torchvision plugin -------------------------------
from clbench.api import run_suite, validate_suite  # noqa: E402
from clbench.testing import TINY_MODEL, TINY_TRAIN, write_suite  # noqa: E402

from .test_torchvision_sets import needs_names, registered, write_aircraft, write_dtd, write_eurosat, write_mnist  # noqa: E402


def synthetic_part(label, first, domain):
    return {"dataset": "synthetic", "label": label, "first_class": first, "num_classes": 3, "world_domains": [domain],
            "train_per_class": 4, "test_per_class": 2}


def sequence_suite(tmp_path, stream_extra=None, datasets=None, methods=("zeroshot",)):
    stream = {"name": "seq", "scenario": "dataset_incremental",
              "datasets": datasets or [synthetic_part("a", 0, "clean"), synthetic_part("b", 3, "sketch")], **(stream_extra or {})}
    suite = {"name": "s", "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "streams": [stream], "methods": list(methods),
             "seeds": [0]}
    return write_suite(tmp_path / "s.yaml", suite)


@pytest.mark.parametrize("extra, datasets, line", [
    ({"steps": 3}, None, "streams[0].steps: a dataset-incremental stream has no 'steps'"),
    ({"class_order": "seeded"}, None, "streams[0].class_order: a dataset-incremental stream has no 'class_order'"),
    ({"num_classes": 3}, None, "streams[0].num_classes: not a key of a dataset-incremental stream; its keys: name, scenario, datasets"),
    ({"datasetz": []}, None, "streams[0].datasetz: not a key of a dataset-incremental stream (did you mean 'datasets'?)"),
    ({}, [synthetic_part("a", 0, "clean"), 7], "streams[0].datasets[1]: must be a mapping with 'dataset'"),
    ({}, [synthetic_part("a", 0, "clean"), {**synthetic_part("b", 3, "clean"), "label": ["x"]}], "streams[0].datasets[1].label: ['x']; use a non-empty string"),
    ({}, [synthetic_part("a", 0, "clean"), {**synthetic_part("b", 3, "clean"), "shots": 0}], "streams[0].datasets[1].shots: 0; use a whole number"),
    ({"prompts": {"class_names": "raw"}}, None, "streams[0].prompts.class_names: dataset 'synthetic' (streams[0].datasets[0]) offers no raw class names"),
    ({"label_space": "seen"}, None, "streams[0].label_space: Input should be 'dataset' or 'all'"),
    ({}, [synthetic_part("a", 0, "clean")], "streams[0].datasets: a dataset-incremental stream needs a list of at least two"),
    ({}, [synthetic_part("a", 0, "clean"), {"dataset": "synthtic"}], "streams[0].datasets[1].dataset: unknown dataset 'synthtic' (did you mean 'synthetic'?)"),
    ({}, [synthetic_part("a", 0, "clean"), {**synthetic_part("b", 3, "clean"), "first_class": 69}], "streams[0].datasets[1]: first_class 69 + num_classes 3 passes the world's 70 classes"),
    ({}, [synthetic_part("a", 0, "clean"), synthetic_part("a", 3, "clean")], "streams[0].datasets[1].label: 'a' names two datasets"),
])
def test_bad_sequences_are_one_line_naming_the_key(tmp_path, extra, datasets, line):
    from clbench.errors import UserError

    with pytest.raises(UserError) as info:
        validate_suite(sequence_suite(tmp_path, extra, datasets))
    assert line in str(info.value) and "\n" not in str(info.value)


def test_a_sequence_s_facts_and_a_stream_without_sequence_keys_keep_their_ids(tmp_path):
    suite = validate_suite(sequence_suite(tmp_path, {"label_space": "all"}))
    stream = suite.cells[0].config["stream"]
    assert [d["label"] for d in stream["datasets"]] == ["a", "b"] and stream["label_space"] == "all"
    assert stream["datasets"][1]["options"]["first_class"] == 3
    from clbench.testing import tiny_suite

    plain = validate_suite(write_suite(tmp_path / "p.yaml", tiny_suite(["zeroshot"])))
    assert "datasets" not in plain.cells[0].config["stream"] and "label_space" not in plain.cells[0].config["stream"]


@needs_names
def test_a_miniature_mtil_through_torchvision_task_aware_and_task_agnostic(tmp_path, plugins):
    """Aircraft, DTD, EuroSAT and MNIST in MTIL's order, as torchvision lays them out; the metrics from the matrix by hand."""
    import json

    for write in (write_aircraft, write_dtd, write_eurosat, write_mnist):
        write(tmp_path)
    registered(plugins)
    parts = [{"dataset": "torchvision", "set": name, "root": str(tmp_path), "workers": 0}
             for name in ("FGVCAircraft", "DTD", "EuroSAT", "MNIST")]
    streams = [{"name": "mtil4", "scenario": "dataset_incremental", "label_space": "dataset", "datasets": parts},
               {"name": "xtail4", "scenario": "dataset_incremental", "label_space": "all", "datasets": parts}]
    suite = {"name": "mtil", "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "streams": streams,
             "methods": ["zeroshot", "finetune"], "seeds": [0]}
    summary = run_suite(write_suite(tmp_path / "mtil.yaml", suite), tmp_path / "out", plugins=plugins, progress=False)
    assert summary.ok
    records = {(r["stream"], r["method"]): r for r in
               (json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json"))}
    assert len(records) == 4
    for (stream, method), r in records.items():
        assert [e["domain"] for e in r["experiences"]] == ["FGVCAircraft", "DTD", "EuroSAT", "MNIST"]
        assert [len(e["classes"]) for e in r["experiences"]] == [100, 47, 10, 10]
        A = r["acc_matrix"]
        by_hand = {
            "transfer": (A[0][1] + (A[0][2] + A[1][2]) / 2 + (A[0][3] + A[1][3] + A[2][3]) / 3) / 3,
            "mtil_avg": sum(sum(A[t][j] for t in range(4)) / 4 for j in range(4)) / 4,
            "mtil_last": sum(A[3]) / 4,
        }
        for name, value in by_hand.items():
            assert r["metrics"][name] == pytest.approx(value), (stream, method, name)
    # the untrained model's rows are its zero-shot accuracy, the same at every step; over every dataset's 167 classes
    # (X-TAIL) a test set can only score lower than over its own dataset's classes (MTIL)
    mtil, xtail = records[("mtil4", "zeroshot")]["acc_matrix"], records[("xtail4", "zeroshot")]["acc_matrix"]
    assert all(row == mtil[0] for row in mtil) and all(x <= m for x, m in zip(xtail[0], mtil[0]))
    assert records[("mtil4", "zeroshot")]["initial_acc"] == mtil[0]


def test_the_mtil_and_xtail_suites_hold_the_published_sequences():
    """MTIL's order I (Thunderbeee/ZSCL mtil/scripts) and X-TAIL's ten datasets at 16 shots (RAIL configs/analytic_clip.yaml)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "suites"
    mtil = validate_suite(root / "mtil.yaml")
    stream = mtil.cells[0].config["stream"]
    assert [d["options"]["set"] for d in stream["datasets"]] == [
        "FGVCAircraft", "Caltech101", "CIFAR100", "DTD", "EuroSAT", "Flowers102", "Food101", "MNIST", "OxfordIIITPet",
        "StanfordCars", "SUN397"]
    assert stream["label_space"] == "dataset" and len(mtil.cells) == 6
    xtail = validate_suite(root / "xtail.yaml")
    stream = xtail.cells[0].config["stream"]
    assert [d["options"]["set"] for d in stream["datasets"]] == [
        "FGVCAircraft", "Caltech101", "DTD", "EuroSAT", "Flowers102", "Food101", "MNIST", "OxfordIIITPet", "StanfordCars",
        "SUN397"]
    assert stream["label_space"] == "all" and {d["shots"] for d in stream["datasets"]} == {16} and len(xtail.cells) == 18


def test_few_shot_keeps_at_most_k_training_images_per_class_and_every_test_image(merged):
    from clbench.data.sequence import few_shot

    part = tiny("pets", 3, 8, 0, ["{}"])
    one = few_shot(part, 1, seed=0)
    assert sorted(one.train.labels.tolist()) == [0, 1, 2] and len(one.test) == len(part.test)
    assert torch.equal(few_shot(part, 1, seed=0).train.labels, one.train.labels)  # seeded
    assert len(few_shot(part, 5, seed=0).train) == len(part.train)  # fewer than k: all of them



def test_raw_names_of_a_sequence_are_its_datasets_raw_names(merged):
    from dataclasses import replace as dc_replace

    a = dc_replace(tiny("a", 2, 8, 0, ["{}"]), raw_class_names=["a_0", "a_1"])
    b = dc_replace(tiny("b", 1, 8, 0, ["{}"]), raw_class_names=["b_0"])
    assert merge_datasets([("a", a), ("b", b)], 8).raw_class_names == ["a_0", "a_1", "b_0"]
    assert merged.raw_class_names is None  # one dataset without raw names: none for the sequence


def test_replay_on_datasets_of_different_sizes_and_labels_outside_the_id(tmp_path):
    """er's memory mixes 16 px and 32 px datasets; renaming a dataset's label keeps every cell id."""
    small = {**synthetic_part("small", 0, "clean"), "image_size": 16}
    path = sequence_suite(tmp_path, {}, [small, synthetic_part("big", 3, "noisy")], methods=({"name": "er", "buffer": {"size": 6}},))
    summary = run_suite(path, tmp_path / "out", progress=False)
    assert summary.ok
    ids = [c.cell_id for c in validate_suite(path).cells]
    renamed = sequence_suite(tmp_path, {}, [{**small, "label": "renamed"}, synthetic_part("big", 3, "noisy")],
                             methods=({"name": "er", "buffer": {"size": 6}},))
    assert [c.cell_id for c in validate_suite(renamed).cells] == ids


def test_a_sequence_counts_every_domain_s_training_images():
    """Two datasets of 2 classes × 4 images in each of 4 domains: 64 training images, so a memory of 60 is valid."""
    from clbench.errors import UserError
    from pathlib import Path
    import tempfile

    parts = [{"dataset": "synthetic", "first_class": f, "num_classes": 2, "train_per_class": 4, "test_per_class": 1,
              "label": str(f)} for f in (0, 2)]
    with tempfile.TemporaryDirectory() as folder:
        ok = sequence_suite(Path(folder), {}, parts, methods=({"name": "er", "buffer": {"size": 60}},))
        assert len(validate_suite(ok).cells) == 1
        bad = sequence_suite(Path(folder), {}, parts, methods=({"name": "er", "buffer": {"size": 65}},))
        with pytest.raises(UserError, match="only 64 training images"):
            validate_suite(bad)

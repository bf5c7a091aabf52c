"""The embedded default: the synthetic world and the tiny CLIP pretrained on it."""
import hashlib
import json

import pytest
import torch

from clbench.data.synthetic import COLOURS, DOMAINS, SHAPES, class_parts, PRETRAIN_DOMAINS, PRETRAIN_HELD_OUT_CLASSES, _rendered, render_split
from clbench.models import PROJECT_WEIGHTS, build_clip
from clbench.pretrain import WEIGHTS_DIR, evaluation_set, pretrain, pretrain_classes, zero_shot_accuracy

MANIFEST = json.loads((WEIGHTS_DIR / "MANIFEST.json").read_text())


def test_every_split_is_rebuilt_identically_from_its_seed():
    for split in ("train", "test", "pretrain"):
        a = render_split(split, range(10), DOMAINS, 3)
        _rendered.cache_clear()  # render again, not from the process's cache
        b = render_split(split, range(10), DOMAINS, 3)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        c = render_split(split, range(10), DOMAINS, 3)
        c.images[:] = 0  # a caller that changes its set in place changes no later one
        assert torch.equal(render_split(split, range(10), DOMAINS, 3).images, a.images)


def test_pretraining_split_is_disjoint_from_the_stream_splits():
    pre = render_split("pretrain", range(5), ["clean"], 20).images.flatten(1)
    for split in ("train", "test"):
        other = render_split(split, range(5), ["clean"], 20).images.flatten(1)
        # no pretraining image reappears in a stream split
        assert not (pre[:, None, :] == other[None, :, :]).all(-1).any()


def test_part_of_the_world_is_held_out_of_pretraining():
    assert "inverted" in DOMAINS and "inverted" not in PRETRAIN_DOMAINS
    assert PRETRAIN_HELD_OUT_CLASSES == tuple(range(40))  # the demo's world-ci5 teaches exactly these
    assert not set(pretrain_classes()) & set(PRETRAIN_HELD_OUT_CLASSES)
    assert MANIFEST["held_out_classes"] == list(PRETRAIN_HELD_OUT_CLASSES)
    assert MANIFEST["pretrain_domains"] == list(PRETRAIN_DOMAINS)
    # the held-out classes are new compositions, not new words: each colour and each shape was pretrained on
    parts = [class_parts(k) for k in pretrain_classes()]
    assert {c for c, _ in parts} == set(COLOURS) and {s for _, s in parts} == set(SHAPES)


def test_zero_shot_does_poorly_on_what_was_held_out_and_well_on_the_rest():
    """What the demo's story rests on, in the manifest and recomputed from the shipped weights."""
    by_group = MANIFEST["zero_shot_accuracy_clean_by_group"]
    assert by_group["held_out"] <= 0.5 and by_group["pretrained"] >= 1.5 * by_group["held_out"]
    assert MANIFEST["zero_shot_accuracy_50_classes"]["inverted"] <= 0.05  # the held-out domain: chance is 0.02
    clip = build_clip("clbench-tiny-32", "tinyworld")
    test = render_split("test", range(40), ["clean"], 20)
    assert zero_shot_accuracy(clip, test.images, test.labels, list(range(40))) == pytest.approx(by_group["held_out"], abs=0.005)


def test_earlier_weights_stay_available_under_their_own_tag():
    """suites/small_buffer.yaml's numbers (docs/demo/small_buffer.md) were measured on 'tinyworld-v1'."""
    weights = PROJECT_WEIGHTS[("clbench-tiny-32", "tinyworld-v1")]
    manifest = json.loads((weights.parent / "MANIFEST.json").read_text())
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == manifest["sha256"]
    assert manifest["held_out_classes"] == [k for k in range(70) if k % 6 == 5] and "sketch" not in manifest["pretrain_domains"]
    assert "tinyworld-v1" in (WEIGHTS_DIR.parent.parent.parent / "suites" / "small_buffer.yaml").read_text()


def test_shipped_checkpoint_is_the_one_its_manifest_describes():
    weights = PROJECT_WEIGHTS[("clbench-tiny-32", "tinyworld")]
    blob = weights.read_bytes()
    assert len(blob) <= 8 * 2**20 and len(blob) == MANIFEST["bytes"]
    assert hashlib.sha256(blob).hexdigest() == MANIFEST["sha256"]
    assert MANIFEST["command"].startswith("clbench pretrain") and "seed" in MANIFEST


def test_shipped_checkpoint_reproduces_its_zero_shot_accuracy():
    clip = build_clip("clbench-tiny-32", "tinyworld")
    test = evaluation_set("clean")
    accuracy = zero_shot_accuracy(clip, test.images, test.labels, list(range(50)))
    assert accuracy == pytest.approx(MANIFEST["zero_shot_accuracy_50_classes"]["clean"], abs=0.005)
    assert accuracy >= 5 * (1 / 50)  # the demo needs a model far above chance


def test_shipped_weights_folder_is_a_valid_local_dir_model():
    a = build_clip(f"local-dir:{WEIGHTS_DIR}").model.state_dict()
    b = build_clip("clbench-tiny-32", "tinyworld").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_script_writes_a_loadable_checkpoint(tmp_path):
    manifest = pretrain(tmp_path, seed=1, epochs=1, per_class=2, batch_size=64, log=lambda line: None)
    assert (tmp_path / "open_clip_model.safetensors").stat().st_size == manifest["bytes"]
    assert manifest["command"] == "clbench pretrain --seed 1 --epochs 1 --per-class 2 --batch-size 64 --lr 0.002"
    assert set(manifest["zero_shot_accuracy_50_classes"]) == set(DOMAINS)
    build_clip("clbench-tiny-32", str(tmp_path / "open_clip_model.safetensors"))

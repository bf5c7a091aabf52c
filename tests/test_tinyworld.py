"""The embedded default: the synthetic world and the tiny CLIP pretrained on it."""
import hashlib
import json

import pytest
import torch

from clbench.data.synthetic import DOMAINS, PRETRAIN_DOMAINS, PRETRAIN_HELD_OUT_CLASSES, render_split
from clbench.models import PROJECT_WEIGHTS, build_clip
from clbench.pretrain import WEIGHTS_DIR, evaluation_set, pretrain, pretrain_classes, zero_shot_accuracy

MANIFEST = json.loads((WEIGHTS_DIR / "MANIFEST.json").read_text())


def test_every_split_is_rebuilt_identically_from_its_seed():
    for split in ("train", "test", "pretrain"):
        a = render_split(split, range(10), DOMAINS, 3)
        b = render_split(split, range(10), DOMAINS, 3)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_pretraining_split_is_disjoint_from_the_stream_splits():
    pre = render_split("pretrain", range(5), ["clean"], 20).images.flatten(1)
    for split in ("train", "test"):
        other = render_split(split, range(5), ["clean"], 20).images.flatten(1)
        # no pretraining image reappears in a stream split
        assert not (pre[:, None, :] == other[None, :, :]).all(-1).any()


def test_part_of_the_world_is_held_out_of_pretraining():
    assert "sketch" in DOMAINS and "sketch" not in PRETRAIN_DOMAINS
    assert len(PRETRAIN_HELD_OUT_CLASSES) >= 8
    assert not set(pretrain_classes()) & set(PRETRAIN_HELD_OUT_CLASSES)
    assert MANIFEST["held_out_classes"] == list(PRETRAIN_HELD_OUT_CLASSES)


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

import json

import pytest
import torch
from safetensors.torch import save_file

from clbench.errors import UserError
from clbench.models import CONFIG_DIR, build_clip


def test_tiny_config_builds_offline():
    clip = build_clip("clbench-tiny-32")
    n = sum(p.numel() for p in clip.model.parameters())
    assert 2_000_000 < n < 5_000_000 and clip.image_size == 32
    tokens = clip.tokenizer(["a photo of a red circle."])
    assert tokens.shape == (1, 16)


def _state(seed: int):
    torch.manual_seed(seed)
    return build_clip("clbench-tiny-32").model.state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_file_round_trip(tmp_path, suffix):
    state = _state(1)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(2)  # a different init, which the checkpoint must overwrite
    loaded = build_clip("clbench-tiny-32", str(path)).model.state_dict()
    assert all(torch.equal(state[k], loaded[k]) for k in state)


def test_local_dir_with_open_clip_config(tmp_path):
    state = _state(3)
    config = json.loads((CONFIG_DIR / "clbench-tiny-32.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "open_clip_model.safetensors"))
    loaded = build_clip(f"local-dir:{tmp_path}").model.state_dict()
    assert all(torch.equal(state[k], loaded[k]) for k in state)


@pytest.mark.parametrize(
    "arch, pretrained, message",
    [
        ("clbench-tiny-23", None, "unknown architecture 'clbench-tiny-23' (did you mean 'clbench-tiny-32'?)"),
        ("clbench-tiny-32", "/no/such/weights.pt", "checkpoint file '/no/such/weights.pt' not found"),
        ("ViT-B-16", "openia", "neither a checkpoint file nor a known tag for ViT-B-16"),
        ("local-dir:/no/such/dir", None, "folder '/no/such/dir' not found"),
    ],
)
def test_bad_model_settings(arch, pretrained, message):
    with pytest.raises(UserError) as info:
        build_clip(arch, pretrained)
    assert message in str(info.value)

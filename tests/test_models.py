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


# --- activation the pretrained weights need --------------------------------------------------------
import open_clip  # noqa: E402

from clbench.models import activation_name, tag_needs_quick_gelu  # noqa: E402


def test_openai_tags_need_quick_gelu_and_laion_tags_do_not():
    # OpenAI's CLIP was trained with QuickGELU (Radford et al. 2021, CLIP's model.py); open_clip's
    # pretrained.py marks its 'openai' tags quick_gelu=True, LAION's ViT-B-16 tags do not.
    assert tag_needs_quick_gelu("ViT-B-16", "openai") and tag_needs_quick_gelu("ViT-L-14", "openai")
    assert not tag_needs_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")
    assert not tag_needs_quick_gelu("ViT-B-16", None) and not tag_needs_quick_gelu("ViT-B-16", "/w/openai.pt")


@pytest.mark.parametrize("arch, tag", [(a, t) for a, t in open_clip.list_pretrained() if not a.startswith("hf-hub")])
def test_every_arch_tag_pair_is_built_with_the_activation_its_weights_were_trained_with(monkeypatch, arch, tag):
    # what create_model would build: the arch's own config, with QuickGELU forced where clbench asks for it
    seen = {}

    def fake_create_model(name, pretrained=None, force_quick_gelu=False, **kwargs):
        cfg = open_clip.get_model_config(name) or {}
        seen["quick_gelu"] = bool(cfg.get("quick_gelu", False) or force_quick_gelu)
        raise RuntimeError("stop before downloading")

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    with pytest.raises(UserError):
        build_clip(arch, tag)
    assert seen["quick_gelu"] == bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False)) or (
        # a '-quickgelu' arch keeps QuickGELU whatever the tag says
        seen["quick_gelu"] and (open_clip.get_model_config(arch) or {}).get("quick_gelu"))


def test_vit_b16_openai_is_built_with_quick_gelu_without_downloading(monkeypatch, tmp_path):
    # stub the weight file: the tag resolves to a local path and loading it is a no-op
    import open_clip.factory as factory

    monkeypatch.setattr(factory, "download_pretrained", lambda cfg, cache_dir=None: str(tmp_path / "ViT-B-16.pt"))
    monkeypatch.setattr(factory, "load_checkpoint", lambda *a, **k: None)
    clip = build_clip("ViT-B-16", "openai")
    assert clip.activation == "quick_gelu" and activation_name(clip.model) == "quick_gelu"
    assert clip.image_size == 224


def test_a_quick_gelu_tag_is_loaded_into_a_quick_gelu_model(monkeypatch, tmp_path):
    # a tag of the tiny arch marked like OpenAI's: the real checkpoint path (download stubbed) loads into QuickGELU
    import open_clip.factory as factory
    from open_clip import pretrained as registry

    state = _state(4)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    monkeypatch.setitem(registry._PRETRAINED, "clbench-tiny-32", {"like_openai": registry._pcfg(url="x", quick_gelu=True)})
    monkeypatch.setattr(factory, "download_pretrained", lambda cfg, cache_dir=None: str(path))
    clip = build_clip("clbench-tiny-32", "like_openai")
    assert clip.activation == "quick_gelu"
    assert all(torch.equal(state[k], v) for k, v in clip.model.state_dict().items())
    assert build_clip("clbench-tiny-32").activation == "gelu"

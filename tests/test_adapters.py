"""LoRA adapters (``model.adapter``) on the tiny random-init open_clip model: counts, frozen bases, records, resume, ids."""
import copy

import pytest
import torch

pytest.importorskip("peft")

from clbench import hookimpl  # noqa: E402
from clbench.adapters import apply_adapter, is_adapter_parameter  # noqa: E402
from clbench.config import TrainConfig  # noqa: E402
from clbench.data.scenarios import build_stream  # noqa: E402
from clbench.data.synthetic import build_synthetic  # noqa: E402
from clbench.errors import UserError  # noqa: E402
from clbench.learner import Learner  # noqa: E402
from clbench.models import build_clip  # noqa: E402
from clbench.plugins import Plugins, make_plugin_manager  # noqa: E402
from clbench.runner import run_cell, seed_everything  # noqa: E402
from clbench.suite import cell_id_of, load_suite  # noqa: E402
from clbench.testing import tiny_suite, write_suite  # noqa: E402

from .test_reliability import Interrupt  # noqa: E402

LORA = {"kind": "lora", "rank": 4, "alpha": 8}
ARCH = "clbench-tiny-32"  # both towers: 2 blocks of width 64, MLP 4 x 64 = 256 (clbench/model_configs)
WIDTH, MLP, BLOCKS = 64, 256, 2
LAYERS = {  # (in, out) of each wrapped layer in one block
    "c_fc": (WIDTH, MLP), "c_proj": (MLP, WIDTH), "in_proj": (WIDTH, 3 * WIDTH), "out_proj": (WIDTH, WIDTH),
}


def resolved(**adapter) -> dict:
    from clbench.config import AdapterConfig

    return AdapterConfig(**{**LORA, **adapter}).model_dump(mode="json")


def lora_suite(methods, adapter=None, **kw) -> dict:
    suite = tiny_suite(methods, **kw)
    suite["model"]["adapter"] = dict(adapter or LORA)
    return suite


def cells(tmp_path, suite, plugins):
    return load_suite(write_suite(tmp_path / "s.yaml", suite), plugins).cells


def tiny_learner(adapter=None) -> Learner:
    torch.manual_seed(0)
    data = build_synthetic(num_classes=6, train_per_class=4, test_per_class=3, world_domains=["clean"])
    stream = build_stream(data, "class_incremental", 0, "s", steps=2)
    return Learner(build_clip(ARCH, adapter=adapter), stream, TrainConfig(batch_size=8, lr=1e-3, weight_decay=0.0), seed=0)


# --- counts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("towers, targets", [
    (["image", "text"], ["c_fc", "c_proj", "in_proj", "out_proj"]),
    (["image"], ["c_fc"]),
    (["text"], ["in_proj", "out_proj"]),
    (["image", "text"], ["out_proj"]),
])
@pytest.mark.parametrize("rank", [1, 4])
def test_lora_adds_exactly_rank_times_in_plus_out_per_wrapped_layer(towers, targets, rank):
    full = build_clip(ARCH).model
    base = sum(p.numel() for p in full.parameters())
    model = build_clip(ARCH, adapter=resolved(rank=rank, towers=towers, targets=targets)).model
    expected = len(towers) * BLOCKS * sum(rank * (LAYERS[t][0] + LAYERS[t][1]) for t in targets)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected
    assert sum(p.numel() for p in model.parameters()) == base + expected
    assert all(is_adapter_parameter(n) for n in trainable)
    assert {("image" if n.startswith("visual.") else "text") for n in trainable} == set(towers)
    assert not model.logit_scale.requires_grad


def test_a_fresh_adapter_leaves_the_model_s_function_unchanged():
    seed_everything(0)
    plain = build_clip(ARCH).model.eval()
    seed_everything(0)
    lora = build_clip(ARCH, adapter=resolved()).model.eval()  # B starts at zero: W + BA = W
    images = torch.randn(3, 3, 32, 32)
    from open_clip import get_tokenizer

    tokens = get_tokenizer(ARCH)(["a red circle", "a blue square"])
    with torch.no_grad():
        assert torch.allclose(plain.encode_image(images), lora.encode_image(images), atol=1e-5)
        assert torch.allclose(plain.encode_text(tokens), lora.encode_text(tokens), atol=1e-5)


def test_zeroshot_with_a_fresh_adapter_scores_as_the_plain_model(tmp_path, plugins):
    plain = tiny_suite(["zeroshot"])
    plain["model"]["pretrained"] = "tinyworld"  # clbench's shipped tiny CLIP: accuracies well above zero
    lora = lora_suite(["zeroshot"])
    lora["model"]["pretrained"] = "tinyworld"
    a, b = (run_cell(cells(tmp_path, s, plugins)[0], plugins) for s in (plain, lora))
    assert a["status"] == b["status"] == "done"
    assert a["initial_acc"] == b["initial_acc"] and a["acc_matrix"] == b["acc_matrix"]
    assert min(a["initial_acc"]) > 0.5


# --- training touches only the adapters ------------------------------------------------------------

class Capture:
    """Keeps a copy of the model's weights after every experience."""

    def __init__(self):
        self.states = []

    @hookimpl
    def clbench_experience_end(self, cell, step, acc_row, learner):
        self.states.append({k: v.detach().clone() for k, v in learner.weights().items()})


@pytest.mark.parametrize("method", ["finetune", {"name": "dro_replay", "buffer": {"size": 6}}],
                         ids=["finetune", "dro_replay"])
def test_training_changes_every_adapter_and_no_base_weight(tmp_path, method):
    plugins = Plugins(make_plugin_manager())
    capture = Capture()
    plugins.pm.register(capture)
    suite = lora_suite([method])
    suite["train"].update(lr=1e-3, epochs=2)
    cell = cells(tmp_path, suite, plugins)[0]
    seed_everything(cell.seed)  # as run_cell does: the same base weights and adapter initialisation
    before = {k: v.clone() for k, v in build_clip(ARCH, adapter=cell.config["model"]["adapter"]).model.state_dict().items()}
    record = run_cell(cell, plugins)
    assert record["status"] == "done", record.get("error")
    after = capture.states[-1]
    assert after.keys() == before.keys()
    adapters = [k for k in before if is_adapter_parameter(k)]
    assert adapters and len(adapters) == 2 * 4 * 2 * BLOCKS  # A and B, 4 targets, 2 towers
    changed = [k for k in adapters if not torch.equal(before[k], after[k])]
    assert changed == adapters  # in_proj and out_proj adapters too: they receive gradients
    assert all(torch.equal(before[k], after[k]) for k in before if not is_adapter_parameter(k))  # bit-identical base


def test_learner_api_works_with_adapters():
    learner = tiny_learner(resolved())
    exp = learner.stream.experiences[0]
    trainable = learner.trainable_parameters()
    assert trainable and all(is_adapter_parameter(n) for n in trainable)
    assert float(learner.logit_scale) == pytest.approx(float(learner.model.logit_scale.exp()))
    weights = learner.weights()
    assert any(k.endswith("in_proj_weight") for k in weights) and any("lora_B" in k for k in weights)

    def loss(batch):
        logits = learner.logit_scale * learner.encode_images(batch.images) @ learner.class_features(batch.classes, 0, grad=True).t()
        return torch.nn.functional.cross_entropy(logits, torch.searchsorted(torch.tensor(batch.classes, device=batch.labels.device), batch.labels))

    learner.fit(exp, loss)
    frozen = learner.snapshot()  # a deepcopy: its adapters are its own
    images = learner.preprocess(exp.test.load(torch.arange(4)))
    learner.model.eval()  # as the snapshot is
    with torch.no_grad():
        assert torch.equal(frozen.encode_images(images), learner.encode_images(images))
        assert torch.equal(frozen.class_features([0, 1]), learner.class_features([0, 1]))
    learner.fit(exp, loss)
    with torch.no_grad():
        assert not torch.equal(frozen.encode_images(images), learner.encode_images(images))
    learner.freeze("image")
    assert all(not n.startswith("visual.") for n in learner.trainable_parameters())


# --- records, memory, resume ---------------------------------------------------------------------

def test_a_lora_cell_records_parameter_counts_and_adapter_bytes(tmp_path, plugins):
    full, lora = cells(tmp_path, tiny_suite(["finetune"]), plugins)[0], cells(tmp_path, lora_suite(["finetune"]), plugins)[0]
    full_record, lora_record = run_cell(full, plugins), run_cell(lora, plugins)
    assert full_record["status"] == lora_record["status"] == "done"
    total = full_record["manifest"]["model"]["parameters"]
    assert full_record["manifest"]["model"]["trainable_parameters"] == total
    added = 2 * BLOCKS * sum(4 * (i + o) for i, o in LAYERS.values())
    assert lora_record["manifest"]["model"]["parameters"] == total + added
    assert lora_record["manifest"]["model"]["trainable_parameters"] == added
    assert lora_record["memory"]["bytes"] == {"adapters": added * 4}  # float32
    assert full_record["memory"]["bytes"] == {}  # no adapters: no such kind


def test_adapter_bytes_add_to_a_replay_method_s_memory(tmp_path, plugins):
    record = run_cell(cells(tmp_path, lora_suite([{"name": "er", "buffer": {"size": 6}}]), plugins)[0], plugins)
    assert set(record["memory"]["bytes"]) == {"adapters", "replay_images"}
    assert record["memory"]["total_bytes"] == sum(record["memory"]["bytes"].values())


@pytest.mark.parametrize("method", ["finetune", {"name": "dro_replay", "buffer": {"size": 6}}], ids=["finetune", "dro_replay"])
def test_a_resumed_lora_cell_gives_the_same_record(tmp_path, plugins, method):
    cell = cells(tmp_path, lora_suite([method]), plugins)[0]
    uninterrupted = run_cell(cell, plugins, checkpoints=tmp_path / "a")
    interrupted = Plugins(make_plugin_manager())
    interrupted.pm.register(Interrupt(0))  # reported done once its checkpoint is saved: the one after experience 0 exists
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, interrupted, checkpoints=tmp_path / "b")
    saved = torch.load(tmp_path / "b" / f"{cell.cell_id}.pt", weights_only=True)
    assert any(is_adapter_parameter(k) for k in saved["model"])  # the checkpoint holds the adapters
    resumed = run_cell(cell, plugins, checkpoints=tmp_path / "b")
    assert resumed["cost"]["resumed_at_experience"] == 1
    assert uninterrupted["status"] == "done"
    stable = lambda r: {k: v for k, v in r.items() if k not in ("cost", "manifest")}  # noqa: E731
    assert stable(resumed) == stable(uninterrupted)
    assert resumed["manifest"]["model"] == uninterrupted["manifest"]["model"]


def test_a_full_model_checkpoint_does_not_restore_into_a_lora_cell(tmp_path, plugins):
    from clbench.checkpoint import CellCheckpoint

    cell = cells(tmp_path, lora_suite(["finetune"]), plugins)[0]
    plain = build_clip(ARCH).model.state_dict()
    learner_state = {"generator": torch.Generator().get_state(), "last_train_loss": None, "cost": [0, 0.0, 0, 0.0]}
    from clbench.checkpoint import rng_state

    CellCheckpoint(tmp_path / "c", cell.cell_id).save({
        "next_step": 1, "rows": [[0.0, 0.0, 0.0]], "losses": [0.0], "initial": [0.0] * 3, "control_before": None,
        "model": plain, "method": {}, "learner": learner_state, "rng": rng_state()})
    record = run_cell(cell, plugins, checkpoints=tmp_path / "c")
    assert record["status"] == "failed" and "could not restore the checkpoint" in record["error"]


def test_state_dict_round_trips_into_a_freshly_wrapped_model():
    learner = tiny_learner(resolved())
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if is_adapter_parameter(name):
                p.normal_()
    state = copy.deepcopy(learner.model.state_dict())
    fresh = build_clip(ARCH, adapter=resolved()).model
    fresh.load_state_dict(state)  # strict: the same keys
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval().encode_image(images), learner.model.eval().encode_image(images))


# --- suites: ids, validation ---------------------------------------------------------------------

def test_a_suite_without_adapters_keeps_its_cell_ids(tmp_path, plugins):
    plain = cells(tmp_path, tiny_suite(["finetune", "zeroshot"]), plugins)
    assert all(c.config["model"] == {"arch": ARCH, "pretrained": None} for c in plain)
    assert all(c.cell_id == cell_id_of(c.config) for c in plain)
    explicit_null = tiny_suite(["finetune", "zeroshot"])
    explicit_null["model"]["adapter"] = None
    assert [c.cell_id for c in cells(tmp_path, explicit_null, plugins)] == [c.cell_id for c in plain]
    with_lora = cells(tmp_path, lora_suite(["finetune", "zeroshot"]), plugins)
    assert not {c.cell_id for c in with_lora} & {c.cell_id for c in plain}


def test_adapter_defaults_and_order_do_not_split_cells(tmp_path, plugins):
    short = cells(tmp_path, lora_suite(["finetune"], {"kind": "lora"}), plugins)[0]
    spelled = cells(tmp_path, lora_suite(["finetune"], {
        "kind": "lora", "rank": 8, "alpha": 16, "dropout": 0.0, "towers": ["text", "image"],
        "targets": ["out_proj", "in_proj", "c_proj", "c_fc"]}), plugins)[0]
    assert short.cell_id == spelled.cell_id
    assert short.config["model"]["adapter"] == {"kind": "lora", "rank": 8, "alpha": 16.0, "towers": ["image", "text"],
                                                "targets": ["c_fc", "c_proj", "in_proj", "out_proj"], "dropout": 0.0}


@pytest.mark.parametrize("adapter, message", [
    ({"kind": "lora", "rank": 0}, "model.adapter.rank: Input should be greater than 0"),
    ({"kind": "lora", "towers": ["image", "vision"]}, "model.adapter.towers.1: Input should be 'image' or 'text'"),
    ({"kind": "lora", "towers": []}, "model.adapter.towers: List should have at least 1 item"),
    ({"kind": "lora", "towers": ["text", "text"]}, "model.adapter.towers: Value error, tower 'text' is listed twice"),
    ({"kind": "lora", "targets": ["qkv"]}, "model.adapter.targets: 'qkv' is not a layer of clbench-tiny-32's image and text towers"),
    ({"kind": "lora", "targets": ["c_fcc"]}, "(did you mean 'c_fc'?)"),
    ({"kind": "lora", "targets": ["mlp.c_fc"]}, "model.adapter.targets: Value error, 'mlp.c_fc' is not a layer name"),
    ({"kind": "lora", "dropout": 0.1}, "model.adapter.dropout: Value error, peft's LoRA on attention weights (in_proj, out_proj) takes no dropout"),
    ({"kind": "lora", "ranks": 4}, "model.adapter.ranks: unknown key (did you mean 'rank'?)"),
    ({"kind": "ia3"}, "model.adapter.kind: Input should be 'lora'"),
    ({"rank": 4}, "model.adapter.kind: Field required"),
])
def test_validate_refuses_bad_adapter_settings_with_one_line_naming_the_key(tmp_path, plugins, adapter, message):
    with pytest.raises(UserError) as err:
        cells(tmp_path, lora_suite(["finetune"], adapter), plugins)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_dropout_on_linear_targets_is_valid(tmp_path, plugins):
    cell = cells(tmp_path, lora_suite(["finetune"], {"kind": "lora", "rank": 2, "dropout": 0.1, "targets": ["c_fc", "c_proj"]}), plugins)[0]
    record = run_cell(cell, plugins)
    assert record["status"] == "done"
    assert record["manifest"]["model"]["trainable_parameters"] == 2 * BLOCKS * 2 * ((WIDTH + MLP) * 2)


def test_an_unknown_layer_is_a_user_error_when_the_model_is_built():
    # towers open_clip does not build itself (timm, Hugging Face) are checked here; the tiny model stands in
    with pytest.raises(UserError, match=r"model.adapter.targets: no Linear layer named 'ln_1' in the image tower of .*c_fc"):
        apply_adapter(build_clip(ARCH).model, resolved(towers=["image"], targets=["ln_1"]), ARCH)


def test_validate_says_how_to_install_peft_when_it_is_missing(tmp_path, plugins, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a))
    with pytest.raises(UserError, match=r"model.adapter: LoRA adapters need the peft package: pip install 'clbench\[lora\]'"):
        cells(tmp_path, lora_suite(["finetune"]), plugins)

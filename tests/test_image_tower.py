"""The image tower's additions (prompts, prefixes, adapters), the fit of a method's own parameters, and
evaluation from cached features (``Method.predict_features``)."""
import pytest
import torch

from clbench import Method
from clbench.config import TrainConfig
from clbench.data.scenarios import build_stream
from clbench.data.synthetic import build_synthetic
from clbench.errors import UserError
from clbench.image_tower import encode, tower_problem
from clbench.learner import Learner
from clbench.models import build_clip
from clbench.runner import evaluate_step


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_clip("clbench-tiny-32")


@pytest.fixture
def learner(clip):
    data = build_synthetic(num_classes=6, train_per_class=4, test_per_class=3, world_domains=["clean"])
    stream = build_stream(data, "class_incremental", 0, "s", steps=2)
    learner = Learner(clip, stream, TrainConfig(batch_size=8, lr=1e-2, epochs=1), seed=0)
    learner.model.eval()
    return learner


def images(n=3, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def head(visual, x):
    """CLIP's pooling of a token sequence (B, N, W): class token -> ln_post -> projection (the tiny tower pools 'tok')."""
    return visual.ln_post(x[:, 0]) @ visual.proj


def test_without_additions_it_is_open_clips_forward(clip):
    x = images()
    with torch.no_grad():
        assert torch.allclose(encode(clip.model.visual, x), clip.model.encode_image(x), atol=1e-5)
        # an empty prefix table and identity-free adapters table are no additions either
        assert torch.allclose(encode(clip.model.visual, x, prefixes={}, adapters={}), clip.model.encode_image(x), atol=1e-5)


def test_prompts_join_the_sequence_after_the_class_token_and_leave_before_pooling(clip):
    visual, x = clip.model.visual, images()
    prompts = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = visual._embeds(x)  # open_clip's own: class token, patches, positions, ln_pre
        sequence = torch.cat([tokens[:, :1], prompts.expand(3, -1, -1), tokens[:, 1:]], dim=1)
        expected = head(visual, visual.transformer(sequence))  # open_clip's own blocks on the longer sequence
        got = encode(visual, x, prompts=prompts)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, clip.model.encode_image(x), atol=1e-3)  # the prompts were attended to
    per_image = prompts.expand(3, -1, -1).clone()
    with torch.no_grad():
        assert torch.allclose(encode(visual, x, prompts=per_image), got, atol=1e-6)


def test_a_prefix_is_the_projected_keys_and_values_of_extra_tokens_no_query_of_its_own(clip):
    visual, x = clip.model.visual, images()
    block = visual.transformer.resblocks[1]
    extra = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))  # four extra tokens seen by block 1 only
    W = 64
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    keys, values = extra @ w[W:2 * W].t() + b[W:2 * W], extra @ w[2 * W:].t() + b[2 * W:]
    with torch.no_grad():
        h0 = visual.transformer.resblocks[0](visual._embeds(x))
        q = block.ln_1(h0)
        kv = torch.cat([extra.expand(3, -1, -1), q], dim=1)
        after_attention = h0 + block.attn(q, kv, kv, need_weights=False)[0]  # torch's own attention over the longer keys
        expected = head(visual, after_attention + block.mlp(block.ln_2(after_attention)))
        got = encode(visual, x, prefixes={1: (keys, values)})
    assert torch.allclose(got, expected, atol=1e-5)


def test_an_adapter_adds_its_output_beside_the_mlp(clip):
    visual, x = clip.model.visual, images()
    shift = torch.randn(64, generator=torch.Generator().manual_seed(4))
    seen = []

    def adapter(h):
        seen.append(h.shape)
        return shift.expand_as(h)

    with torch.no_grad():
        blocks = visual.transformer.resblocks
        h0 = blocks[0](visual._embeds(x))
        after_attention = h0 + blocks[1].attn(blocks[1].ln_1(h0), blocks[1].ln_1(h0), blocks[1].ln_1(h0), need_weights=False)[0]
        expected = head(visual, after_attention + blocks[1].mlp(blocks[1].ln_2(after_attention)) + shift)
        got = encode(visual, x, adapters={1: adapter})
    assert torch.allclose(got, expected, atol=1e-5)
    assert seen == [torch.Size([3, 1 + 16, 64])]  # 4 × 4 patches of 8 pixels and the class token
    with torch.no_grad():  # an adapter that adds nothing changes nothing
        assert torch.allclose(encode(visual, x, adapters={0: torch.zeros_like}), clip.model.encode_image(x), atol=1e-5)


def test_gradients_reach_prompts_prefixes_and_adapters_not_the_frozen_tower(learner):
    learner.freeze("image")
    prompts = torch.zeros(2, 64, requires_grad=True)
    keys = torch.zeros(3, 64, requires_grad=True)
    scale = torch.ones(64, requires_grad=True)
    feats = learner.encode_images(images(), prompts=prompts, prefixes={0: (keys, keys)}, adapters={1: lambda h: h * scale})
    feats.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (prompts, keys, scale))
    assert all(p.grad is None for p in learner.model.visual.parameters())


def test_bad_additions_are_refused_with_the_reason(learner, clip):
    visual = clip.model.visual
    with pytest.raises(ValueError, match="block 2 outside 0..1"):
        encode(visual, images(), adapters={2: torch.zeros_like})
    with pytest.raises(ValueError, match="width 64"):
        encode(visual, images(), prompts=torch.zeros(2, 32))
    assert "not open_clip's VisionTransformer" in tower_problem(torch.nn.Linear(2, 2))
    shape = learner.image_tower
    assert (shape.width, shape.blocks, shape.tokens, shape.heads, shape.output_dim) == (64, 2, 17, 2, 64)


def test_prompts_under_lora_are_refused_in_one_line():
    pytest.importorskip("peft")
    lora = build_clip("clbench-tiny-32", adapter={"kind": "lora", "rank": 2, "alpha": 4, "dropout": 0.0,
                                                   "towers": ["image"], "targets": ["in_proj"]})
    with pytest.raises(UserError, match="wrapped by model.adapter"):
        encode(lora.model.visual, images(), prompts=torch.zeros(1, 64))


def test_fit_trains_a_method_s_own_parameters_beside_a_frozen_model(learner):
    learner.freeze("image")
    learner.freeze("text")
    prompts = torch.nn.Parameter(torch.zeros(2, 64))
    before = {k: v.clone() for k, v in learner.weights().items()}
    exp = learner.stream.experiences[0]

    def loss(batch):
        feats = learner.encode_images(batch.images, prompts=prompts)
        return learner.logit_scale * -(feats @ learner.class_features(batch.classes).t()).diagonal().mean()

    learner.fit(exp, loss, parameters=[prompts])
    assert prompts.abs().sum() > 0  # trained
    assert all(torch.equal(before[k], v) for k, v in learner.weights().items())  # the model did not move
    with pytest.raises(RuntimeError, match="nothing to train"):
        learner.fit(exp, loss)


class ScaledCosine(Method):
    """Scores from features only: 2·cos to the class prompts (argmax = the zero-shot rule's)."""

    name = "scaled_cosine"
    trains = False

    def predict_features(self, features, classes):
        return 2 * features @ self.learner.class_features(classes).t()


class ScaledCosineFromImages(ScaledCosine):
    def predict(self, images, classes):
        return self.predict_features(self.learner.encode_images(images), classes)


def test_predict_features_scores_cached_features_once_per_tower_version(clip, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE_DIR", "off")  # counts this cell's own encoding, nothing shared with other tests
    data = build_synthetic(num_classes=6, train_per_class=4, test_per_class=3, world_domains=["clean"])
    learner = Learner(clip, build_stream(data, "class_incremental", 0, "s", steps=2), TrainConfig(batch_size=8), seed=0)
    learner.model.eval()
    assert ScaledCosine.scores_from_features() and not ScaledCosine.uses_zero_shot_rule()
    assert not ScaledCosineFromImages.scores_from_features()
    n_test = sum(len(e.test) for e in learner.stream.experiences)
    from_features = [evaluate_step(learner, ScaledCosine(None, learner), t) for t in (0, 1)]
    assert learner.cost.eval_images == n_test  # each test set encoded once for both steps: the tower did not change
    from_images = [evaluate_step(learner, ScaledCosineFromImages(None, learner), t) for t in (0, 1)]
    assert learner.cost.eval_images == n_test + 2 * n_test  # the images path encodes every test set at every step
    zero_shot = [learner.evaluate(None, t) for t in (0, 1)]
    assert from_features == from_images == zero_shot
    learner.weights_changed()  # a changed tower: features are computed again
    evaluate_step(learner, ScaledCosine(None, learner), 1)
    assert learner.cost.eval_images == 4 * n_test


class Inverted(Method):
    """Scores every class by minus CLIP's zero-shot logit: on any label space it picks the least likely class."""

    name = "inverted"
    trains = False

    def predict(self, images, classes):
        return -self.learner.zero_shot_logits(images, classes)


def test_control_accuracy_after_the_last_step_uses_the_method_s_own_scores(plugins):
    """zs_retention of a method with prompts or adapters reflects them, not the untouched backbone."""
    from clbench.testing import TINY_STREAM, run_method

    stream = {**TINY_STREAM, "num_classes": 8, "holdout_classes": 2}
    inverted = run_method(Inverted, stream=stream, plugins=plugins)
    zeroshot = run_method(plugins.methods.get("zeroshot"), stream=stream, plugins=plugins)
    assert inverted["control_acc"]["before"] == zeroshot["control_acc"]["before"]  # the initial model, zero-shot
    assert zeroshot["control_acc"]["after"] == zeroshot["control_acc"]["before"]
    # minus the zero-shot scores picks the other of the two control classes wherever zero-shot is right
    assert inverted["control_acc"]["after"] == pytest.approx(1 - zeroshot["control_acc"]["before"])

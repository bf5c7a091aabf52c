"""l2p and coda_prompt: selection, composition and penalties by hand on tiny pools, frozen earlier slices,
a frozen backbone, refusals, and a tiny cell of each that resumes to the same record."""
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clbench import Batch
from clbench_methods.coda_prompt import CodaPrompt, CodaPromptParams
from clbench_methods.l2p import L2P, L2PParams
from clbench_methods.prompt_pool import (batchwise_majority, coda_weights, compose, gather_prompts, gram_schmidt, ortho_penalty,
                                         pull_constraint, select_top_k)

R2 = 1 / math.sqrt(2)


class FakeLearner:
    """The Learner members the prompt methods use. Images (B, 2) *are* the frozen model's features; with prompts
    the feature is normalize(image + Σ_tokens prompt[:2]), with prefixes normalize(image + Σ_layers Σ_tokens (k + v)[:2])."""

    def __init__(self, width=3, dim=2, blocks=2, experiences=2):
        self.device = torch.device("cpu")
        self.seed = 0
        self.image_tower = SimpleNamespace(width=width, output_dim=dim, blocks=blocks, heads=1, tokens=5)
        self.stream = SimpleNamespace(experiences=list(range(experiences)))
        self.text = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
        self.logit_scale = torch.tensor(10.0)
        self.frozen, self.calls = [], []

    def freeze(self, tower):
        self.frozen.append(tower)

    def encode_images(self, images, prompts=None, prefixes=None, adapters=None):
        self.calls.append({"prompts": prompts, "prefixes": prefixes})
        if prompts is not None:
            return F.normalize(images + prompts.sum(1)[:, :2], dim=1)
        if prefixes:
            return F.normalize(images + sum((k.sum(1) + v.sum(1))[:, :2] for k, v in prefixes.values()), dim=1)
        return images

    def class_features(self, classes, template=None, grad=False):
        return self.text[torch.tensor(classes)]


# --- L2P ---------------------------------------------------------------------------------------------------
# four keys in 2-D (k3 not normalised: cosine ignores the norm) and two queries
KEYS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [2.0, 2.0]])
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
# cos(q0, k) = (1, 0, -1, 1/√2): top-2 = (0, 3); cos(q1, k) = (0, 1, 0, 1/√2): top-2 = (1, 3)
# batch vote: id 3 twice, ids 0 and 1 once each -> (3, 0) (most picked first, a tie goes to the lower id)


def test_l2p_selection_and_surrogate_by_hand():
    idx, sim = select_top_k(QUERIES, KEYS, 2)
    assert idx.tolist() == [[0, 3], [1, 3]]
    assert torch.allclose(sim, torch.tensor([[1.0, 0.0, -1.0, R2], [0.0, 1.0, 0.0, R2]]))
    assert pull_constraint(QUERIES, KEYS, idx).item() == pytest.approx((1 + R2 + 1 + R2) / 2)
    voted = batchwise_majority(idx, 4)
    assert voted.tolist() == [[3, 0], [3, 0]]
    assert pull_constraint(QUERIES, KEYS, voted).item() == pytest.approx((R2 + 1 + R2 + 0) / 2)
    # ties in similarity go to the lower index, as jax.lax.top_k
    assert select_top_k(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]), 2)[0].tolist() == [[1, 2]]


def test_l2p_gathers_the_picked_prompts_in_order():
    prompts = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(4, 2, 3)  # P_m: 2 tokens of width 3
    out = gather_prompts(prompts, torch.tensor([[0, 3], [1, 3]]))
    assert out.shape == (2, 4, 3)
    assert torch.equal(out[0], torch.cat([prompts[0], prompts[3]])) and torch.equal(out[1], torch.cat([prompts[1], prompts[3]]))


def l2p_on_fake(batchwise, coeff=0.1):
    learner = FakeLearner()
    method = L2P(L2PParams(pool_size=4, length=2, top_k=2, pull_constraint_coeff=coeff, batchwise_prompt=batchwise), learner)
    with torch.no_grad():
        method.prompts.copy_(torch.arange(24, dtype=torch.float32).reshape(4, 2, 3) / 24)
        method.keys.copy_(KEYS)
    return method, learner


@pytest.mark.parametrize("batchwise, picks, pulled", [(False, [[0, 3], [1, 3]], 1 + R2), (True, [[3, 0], [3, 0]], (1 + 2 * R2) / 2)])
def test_l2p_loss_is_ce_over_the_current_classes_minus_the_weighted_pull(batchwise, picks, pulled):
    method, learner = l2p_on_fake(batchwise)
    assert learner.frozen == ["image", "text"]
    exp = SimpleNamespace(index=1, classes=[2, 1])
    method.before_experience(exp)
    loss = method.loss(Batch(QUERIES, torch.tensor([1, 2]), [1, 2], exp))
    sent = learner.calls[-1]["prompts"]  # what reached encode_images: the picked prompts, concatenated in order
    expected_tokens = torch.stack([torch.cat([method.prompts[i] for i in row]) for row in picks])
    assert torch.equal(sent, expected_tokens)
    features = F.normalize(QUERIES + expected_tokens.sum(1)[:, :2], dim=1)
    logits = 10.0 * features @ learner.text[[1, 2]].t()  # the current experience's classes only, sorted
    ce = F.cross_entropy(logits, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(ce.item() - 0.1 * pulled, rel=1e-6)
    assert method.counts[-1].tolist() == torch.bincount(torch.tensor(picks).flatten(), minlength=4).tolist()
    loss.backward()
    assert method.keys.grad is not None and method.prompts.grad is not None


def test_l2p_predicts_with_each_images_own_prompts_never_a_batch_vote():
    method, learner = l2p_on_fake(batchwise=True)
    scores = method.predict(QUERIES, [0, 1, 2])
    expected = torch.stack([torch.cat([method.prompts[i] for i in row]) for row in [[0, 3], [1, 3]]])
    assert torch.equal(learner.calls[-1]["prompts"], expected)
    features = F.normalize(QUERIES + expected.sum(1)[:, :2], dim=1)
    assert torch.allclose(scores, 10.0 * features @ learner.text.t())


def test_l2p_defaults_are_l2p_pytorchs_and_top_k_past_the_pool_is_refused():
    assert L2PParams() == L2PParams(pool_size=10, length=5, top_k=5, pull_constraint_coeff=0.1, batchwise_prompt=True)
    problems = L2P.check(L2PParams(pool_size=4, top_k=5), None, None)
    assert problems == {"top_k": "5 but pool_size is 4; pick at most pool_size prompts"}
    with pytest.raises(ValueError, match="top_k"):
        L2P(L2PParams(pool_size=4, top_k=5), FakeLearner())


# --- CODA-Prompt -------------------------------------------------------------------------------------------
def test_coda_weights_and_composed_prompt_by_hand():
    q = torch.tensor([[1.0, 2.0]])
    A = torch.tensor([[1.0, 1.0], [1.0, 0.0], [2.0, -1.0]])
    K = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
    # q ⊙ A = (1, 2), (1, 0), (2, -2); cosines with K: 1, 0, 2/√8 = 1/√2
    alpha = coda_weights(q, K, A)
    assert torch.allclose(alpha, torch.tensor([[1.0, 0.0, R2]]))
    assert torch.allclose(coda_weights(5 * q, K, A), alpha)  # the query's norm does not matter
    P = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[9.0, 9.0], [9.0, 9.0]], [[2.0, 2.0], [0.0, -2.0]]])  # 3 components, Lp 2, W 2
    assert torch.allclose(compose(alpha, P), torch.tensor([[[1 + 2 * R2, 2 * R2], [0.0, 1 - 2 * R2]]]))


def test_ortho_penalty_by_hand():
    # T Tᵀ − I = [[1, 1], [1, 2]] − I = [[0, 1], [1, 1]]: mean of squares 3/4
    assert ortho_penalty(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).item() == pytest.approx(0.75)
    assert ortho_penalty(torch.eye(3)).item() == 0.0
    assert ortho_penalty(torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]]])).item() == pytest.approx(0.75)  # rows flattened


def test_gram_schmidt_rows_are_orthonormal_and_orthogonal_to_earlier_ones():
    g = torch.Generator().manual_seed(0)
    earlier = torch.randn(3, 8, generator=g) + 1.0  # trained components: not orthogonal
    rows = gram_schmidt(earlier, 4, g)
    assert rows.shape == (4, 8) and rows.dtype == torch.float32
    assert torch.allclose(rows @ rows.t(), torch.eye(4), atol=1e-6)
    assert torch.allclose(rows @ earlier.t(), torch.zeros(4, 3), atol=1e-5)
    first = gram_schmidt(torch.zeros(0, 8), 4, torch.Generator().manual_seed(1))
    assert torch.allclose(first @ first.t(), torch.eye(4), atol=1e-6)
    # more rows than dimensions: once the space is full a new orthonormal family starts (no NaN)
    full = gram_schmidt(torch.randn(2, 3, generator=g), 4, g)
    assert torch.isfinite(full).all() and torch.allclose(full.norm(dim=1), torch.ones(4))
    assert torch.allclose(full[1:] @ full[1:].t(), torch.eye(3), atol=1e-6)
    same = gram_schmidt(torch.zeros(0, 8), 4, torch.Generator().manual_seed(1))
    assert torch.equal(first, same)  # seeded: a resumed cell draws the same


def test_coda_prefixes_split_the_composed_prompt_into_keys_then_values():
    learner = FakeLearner(width=2, dim=2)
    method = CodaPrompt(CodaPromptParams(pool_size=6, length=2, layers=[1]), learner)
    assert method.per_task == 3 and learner.frozen == ["image", "text"]
    method.before_experience(SimpleNamespace(index=0, classes=[0, 1]))
    P = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[9.0, 9.0], [9.0, 9.0]], [[2.0, 2.0], [0.0, -2.0]]])
    method.P[1] = [P]
    method.K[1] = [torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])]
    method.A[1] = [torch.tensor([[1.0, 1.0], [1.0, 0.0], [2.0, -1.0]])]
    prefixes, _ = method.prefixes(torch.tensor([[1.0, 2.0]]))
    keys, values = prefixes[1]
    assert list(prefixes) == [1]
    assert torch.allclose(keys, torch.tensor([[[1 + 2 * R2, 2 * R2]]])) and torch.allclose(values, torch.tensor([[[0.0, 1 - 2 * R2]]]))


def test_coda_earlier_slices_get_no_gradient_the_current_one_does():
    learner = FakeLearner(width=3, dim=2, experiences=2)
    method = CodaPrompt(CodaPromptParams(pool_size=4, length=2, layers=[0, 1], ortho_mu=0.5), learner)
    first, second = SimpleNamespace(index=0, classes=[0, 1]), SimpleNamespace(index=1, classes=[1, 2])
    method.before_experience(first)
    old = {id(p) for p in method.parameters()}
    method.before_experience(second)
    current = method.parameters()
    assert len(current) == 6 and not old & {id(p) for p in current}  # P, K, A of 2 layers, all new
    every = [t for table in (method.P, method.K, method.A) for l in (0, 1) for t in table[l]]
    before = [t.detach().clone() for t in every]
    loss = method.loss(Batch(torch.tensor([[1.0, 0.5], [0.2, 1.0]]), torch.tensor([1, 2]), [1, 2], second))
    loss.backward()
    earlier = [t for t in every if all(t is not c for c in current)]
    assert len(earlier) == 6 and all(t.grad is None and not t.requires_grad for t in earlier)
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in current)
    assert all(torch.equal(t, b) for t, b in zip(every, before))
    # the penalty covers the rows of both slices: Σ_l Ω(K_l) + Ω(A_l) + Ω(P_l) with the earlier rows constant
    by_hand = sum(ortho_penalty(torch.cat(table[l])) for table in (method.P, method.K, method.A) for l in (0, 1))
    assert method.penalty().item() == pytest.approx(by_hand.item())


def test_coda_defaults_are_the_references_and_bad_layers_or_pools_are_refused():
    assert CodaPromptParams() == CodaPromptParams(pool_size=100, length=8, ortho_mu=0.0, layers=(0, 1, 2, 3, 4))
    with pytest.raises(ValueError) as info:
        CodaPrompt(CodaPromptParams(), FakeLearner(blocks=2))
    assert str(info.value) == "layers: block 2 but the image tower has 2 blocks (0..1); list blocks below 2"
    with pytest.raises(ValueError, match="pool_size: 1 components cannot be split over 2 experiences"):
        CodaPrompt(CodaPromptParams(pool_size=1, layers=[0]), FakeLearner())
    stream = SimpleNamespace(steps=None, scenario="domain_incremental", domains=("a", "b", "c"), label="s")
    assert CodaPrompt.check(CodaPromptParams(pool_size=2), stream, None) == {
        "pool_size": "2 components cannot be split over the 3 experiences of stream 's'; use at least 3"}
    assert CodaPrompt.check(CodaPromptParams(pool_size=3), stream, None) == {}
    for bad in ([0, 0], [-1], [], 3):
        with pytest.raises(ValueError):
            CodaPromptParams(layers=bad)


def test_a_plain_list_of_layers_in_a_suite_is_explained(tmp_path, plugins):
    from clbench.errors import UserError
    from clbench.suite import load_suite
    from clbench.testing import tiny_suite, write_suite

    plugins.methods.register(CodaPrompt.name, CodaPrompt, "test")
    ok = write_suite(tmp_path / "ok.yaml", tiny_suite([{"name": "coda_prompt", "layers": [[0, 1], [1]]}]))
    assert [c.params["layers"] for c in load_suite(ok, plugins).cells] == [[0, 1], [1]]
    bad = write_suite(tmp_path / "bad.yaml", tiny_suite([{"name": "coda_prompt", "layers": [0, 1]}]))
    with pytest.raises(UserError, match=r"methods\[0\]\.layers: .*write layers: \[\[0, 1, 2\]\]"):
        load_suite(bad, plugins)


# --- on the tiny CLIP ----------------------------------------------------------------------------------------
@pytest.fixture
def learner():
    from clbench.config import TrainConfig
    from clbench.data.scenarios import build_stream
    from clbench.data.synthetic import build_synthetic
    from clbench.learner import Learner
    from clbench.models import build_clip

    torch.manual_seed(0)
    data = build_synthetic(num_classes=4, train_per_class=4, test_per_class=2, world_domains=["clean"])
    stream = build_stream(data, "class_incremental", 0, "s", steps=2)
    return Learner(build_clip("clbench-tiny-32"), stream, TrainConfig(batch_size=8, lr=1e-2, epochs=1), seed=0)


@pytest.mark.parametrize("cls, params", [(L2P, {}), (CodaPrompt, {"layers": [0, 1], "ortho_mu": 0.1})], ids=["l2p", "coda_prompt"])
def test_training_changes_the_prompts_and_not_one_bit_of_the_backbone(learner, cls, params):
    method = cls(cls.Params(**params), learner)
    weights = {k: v.detach().clone() for k, v in learner.weights().items()}
    for exp in learner.stream.experiences:
        method.before_experience(exp)
        pool = [p.detach().clone() for p in method.parameters()]
        method.train(exp)
        assert all(not torch.equal(p, q) for p, q in zip(method.parameters(), pool))
    assert all(torch.equal(v, weights[k]) for k, v in learner.weights().items())
    assert method.memory_summary()["prompts"] > 0


def test_prompt_tokens_and_prefixes_reach_the_real_tower(learner):
    """On the real tower, the prompted feature differs from the plain one and predict scores every class."""
    images = learner.preprocess(next(learner.stream.experiences[0].test.batches(4))[0])
    for method in (L2P(L2PParams(), learner), CodaPrompt(CodaPromptParams(layers=[0, 1]), learner)):
        method.before_experience(learner.stream.experiences[0])
        with torch.no_grad():
            scores = method.predict(images, [0, 1, 2, 3])
            plain = learner.logit_scale * learner.encode_images(images) @ learner.class_features([0, 1, 2, 3]).t()
        assert scores.shape == (4, 4) and not torch.allclose(scores, plain, atol=1e-4)


SMALL_STREAM = {"dataset": "synthetic", "scenario": "class_incremental", "steps": 3, "num_classes": 6, "train_per_class": 6,
                "test_per_class": 3, "world_domains": ["clean"]}


@pytest.mark.parametrize("cls, params", [(L2P, {"pull_constraint_coeff": 0.5, "length": 2, "top_k": 3}),
                                         (CodaPrompt, {"layers": [[0, 1]], "ortho_mu": 0.1})], ids=["l2p", "coda_prompt"])
def test_tiny_cell_runs_records_and_resumes_to_the_same_record(tmp_path, plugins, cls, params):
    from clbench.plugins import Plugins, make_plugin_manager
    from clbench.runner import run_cell

    from .test_reliability import Interrupt, cells_of, stable

    plugins.methods.register(cls.name, cls, "test")
    cell = cells_of(tmp_path, [{"name": cls.name, **params}], plugins, streams=[SMALL_STREAM])[0]
    uninterrupted = run_cell(cell, plugins, checkpoints=tmp_path / "a")
    assert uninterrupted["status"] == "done", uninterrupted.get("traceback")
    state = uninterrupted["method_state"]
    assert "formula" in state and uninterrupted["memory"]["bytes"]["prompts"] > 0
    if cls is L2P:
        assert len(state["selection_frequency"]) == 3 and all(sum(f) == pytest.approx(1.0, abs=1e-5) for f in state["selection_frequency"])
    else:
        assert [len(w) for w in state["slice_weights"]] == [1, 2, 3] and state["components_per_experience"] == 33
    interrupted = Plugins(make_plugin_manager())
    interrupted.methods.register(cls.name, cls, "test")
    interrupted.pm.register(Interrupt(0))  # stops after experience 0: its checkpoint exists
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, interrupted, checkpoints=tmp_path / "b")
    resumed = run_cell(cell, plugins, checkpoints=tmp_path / "b")
    assert resumed["cost"]["resumed_at_experience"] == 1
    assert stable(resumed) == stable(uninterrupted)


def test_coda_prompt_refuses_blocks_the_tower_lacks_before_any_work(plugins):
    from clbench.errors import UserError
    from clbench.testing import run_method

    with pytest.raises(UserError, match=r"methods\[0\]\.layers: block 2 but clbench-tiny-32's image tower has 2 blocks; use blocks 0\.\.1"):
        run_method(CodaPrompt, {}, plugins=plugins)  # layers 0..4 on the 2-block tiny model: refused by validate
    with pytest.raises(ValueError, match="layers: block 2 but the image tower has 2 blocks"):  # and by the method itself
        CodaPrompt(CodaPrompt.Params(), SimpleNamespace(image_tower=SimpleNamespace(blocks=2)))


def test_importing_and_checking_the_methods_does_not_import_torch():
    code = ("import sys; from clbench_methods.l2p import L2P; from clbench_methods.coda_prompt import CodaPrompt, CodaPromptParams; "
            "CodaPrompt.check(CodaPromptParams(), type('S', (), dict(steps=5, scenario='class_incremental', domains=None, label='s')), None); "
            "L2P.check(L2P.Params(), None, None); "
            "print(type(sys.modules.get('torch')).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() in ("NoneType", "_LazyModule"), done.stderr

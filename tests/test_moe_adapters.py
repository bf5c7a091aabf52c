"""moe_adapters: gating, expert mixture, balancing term, activate-freeze and DDAS by hand; a run, a resume, a frozen backbone."""
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clbench import Batch
from clbench_methods.moe_adapters import (ExpertBank, MoEAdapters, MoEAdaptersParams, cv_squared, ddas_input, ddas_route,
                                          make_autoencoder, make_expert, mix, most_used, noisy_top_k_gating,
                                          reconstruction_error)

E1, E2 = math.e, math.e ** 2


def phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_top_k_gating_without_noise_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w_gate = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])  # logits: image 0 (1, 2, 0), image 1 (3, 0, 1)
    gates, load = noisy_top_k_gating(x, w_gate, torch.zeros(2, 3), k=2)
    # image 0 keeps experts 1 and 0: softmax(2, 1); image 1 keeps 0 and 2: softmax(3, 1)
    expected = torch.tensor([[1 / (1 + E1), E1 / (1 + E1), 0.0], [E2 / (1 + E2), 0.0, 1 / (1 + E2)]])
    assert torch.allclose(gates, expected, atol=1e-6)
    assert load.tolist() == [2.0, 1.0, 1.0]  # images per expert
    top1, _ = noisy_top_k_gating(x, w_gate, torch.zeros(2, 3), k=1)
    assert top1.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_noisy_gating_and_its_smooth_load_by_hand():
    x, w_gate = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    noise = torch.tensor([[0.0, 0.0, 3.0]])
    sigma = math.log(2) + 0.01  # softplus(x · 0) + 1e-2
    gates, load = noisy_top_k_gating(x, w_gate, torch.zeros(2, 3), k=2, noise=noise)
    # noisy logits (1, 2, 3σ ≈ 2.11): experts 2 and 1 win, weights softmax(3σ, 2)
    w2 = math.exp(3 * sigma) / (math.exp(3 * sigma) + math.exp(2))
    assert torch.allclose(gates, torch.tensor([[0.0, 1 - w2, w2]]), atol=1e-6)
    # in the top 2 (experts 1, 2): P(beat the 3rd largest noisy logit, 1); out (expert 0): P(beat the 2nd, 2); clean (1, 2, 0)
    expected = [phi((1 - 2) / sigma), phi((2 - 1) / sigma), phi((0 - 1) / sigma)]
    assert load.tolist() == pytest.approx(expected, abs=1e-6)


def hand_experts():
    """Two experts on width 2, bottleneck 1: A(t) = s·relu(t0)·(1, 2); B(t) = s·((1, 0) + relu(t1 − 1)·(0, 1))."""
    a, b = make_expert(2, 1), make_expert(2, 1)
    with torch.no_grad():
        a["down"].weight.copy_(torch.tensor([[1.0, 0.0]]))
        a["up"].weight.copy_(torch.tensor([[1.0], [2.0]]))
        b["down"].weight.copy_(torch.tensor([[0.0, 1.0]]))
        b["down"].bias.fill_(-1.0)
        b["up"].weight.copy_(torch.tensor([[0.0], [1.0]]))
        b["up"].bias.copy_(torch.tensor([1.0, 0.0]))
    return torch.nn.ModuleList([a, b])


TOKENS = torch.tensor([[[2.0, 3.0], [-1.0, 0.5]], [[1.0, 1.0], [4.0, -2.0]]])  # 2 images × 2 tokens × width 2


def test_the_mixture_is_the_gate_weighted_sum_of_the_experts_by_hand():
    gates = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    out = mix(hand_experts(), gates, TOKENS, scale=0.5)
    # image 0: A = (1, 2), (0, 0); B = (0.5, 1), (0.5, 0) -> 0.25 A + 0.75 B; image 1: A alone = (0.5, 1), (2, 4)
    expected = torch.tensor([[[0.625, 1.25], [0.375, 0.0]], [[0.5, 1.0], [2.0, 4.0]]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_a_new_expert_adds_nothing_until_trained():
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    experts = torch.nn.ModuleList([make_expert(8, 4) for _ in range(3)])
    assert torch.equal(mix(experts, torch.tensor([[0.5, 0.5, 0.0]] * 3), x, scale=0.1), torch.zeros_like(x))


def test_the_router_reads_each_images_class_token_only():
    bank = ExpertBank([0], width=2, experts=2, bottleneck=1, routers=1, top_k=1, scale=0.5, dropout=0.0, noisy=False,
                      device="cpu")
    bank.net["0"]["experts"] = hand_experts()
    with torch.no_grad():
        bank.net["0"]["router"][0].copy_(torch.tensor([[1.0, 0.0], [0.0, 0.8]]))  # logits (c0, 0.8 c1) of class token c
    # class tokens (2, 3) -> logits (2, 2.4): expert B alone; (1, 1) -> (1, 0.8): expert A alone (top 1, weight 1)
    expected = mix(hand_experts(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), TOKENS, scale=0.5)
    assert torch.allclose(bank.adapters()[0](TOKENS), expected, atol=1e-6)
    swapped = TOKENS.flip(1)  # the second tokens as class tokens: (-1, 0.5) -> B, (4, -2) -> A
    assert torch.allclose(bank.adapters()[0](swapped), mix(hand_experts(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), swapped, 0.5))


def test_balancing_term_by_hand():
    assert cv_squared(torch.tensor([2.0, 1.0, 1.0])).item() == pytest.approx((1 / 3) / (16 / 9), rel=1e-6)  # var/mean²
    assert cv_squared(torch.tensor([5.0])).item() == 0.0
    bank = ExpertBank([0], width=2, experts=3, bottleneck=1, routers=1, top_k=2, scale=0.1, dropout=0.0, noisy=False,
                      device="cpu")
    with torch.no_grad():
        bank.net["0"]["router"][0].copy_(torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]]))
    bank.training, bank.balance = True, True
    bank.adapters()[0](torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))  # the gates of test_top_k_gating_without_noise_by_hand
    importance = [1 / (1 + E1) + E2 / (1 + E2), E1 / (1 + E1), 1 / (1 + E2)]
    mean = sum(importance) / 3
    cv_importance = sum((v - mean) ** 2 for v in importance) / 2 / mean ** 2
    assert len(bank.terms) == 1 and bank.terms[0].item() == pytest.approx(cv_importance + 3 / 16, rel=1e-5)
    assert bank.usage.tolist() == [[2, 1, 1]]


# --- the method on a fake learner: tokens (B, N, W) stand for images ------------------------------------------
def fake_learner(width=2, blocks=2, experiences=2):
    text = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)

    def encode_images(x, adapters=None):
        out = x
        for f in (adapters or {}).values():
            out = out + f(out)
        return F.normalize(out[:, 0], dim=1)

    learner = SimpleNamespace(
        image_tower=SimpleNamespace(blocks=blocks, width=width), device=torch.device("cpu"), seed=0,
        stream=SimpleNamespace(experiences=list(range(experiences)), seen=lambda t: [0, 1, 2]),
        freeze=lambda tower: None, encode_images=encode_images, logit_scale=torch.tensor(10.0),
        class_features=lambda classes, template=None: text[torch.tensor(list(classes))],
    )
    learner.fit_calls = []
    learner.fit = lambda exp, loss_fn, parameters=(): learner.fit_calls.append(list(parameters))
    return learner, text


def test_the_loss_is_smoothed_cross_entropy_over_the_experiences_classes_plus_the_weighted_balance():
    learner, text = fake_learner()
    method = MoEAdapters(MoEAdaptersParams(experts=3, label_smoothing=0.1, balance_weight=0.5, dropout=0.0), learner)
    torch.manual_seed(0)
    for p in method.bank.net.parameters():
        torch.nn.init.normal_(p)
    method.bank.training, method.bank.noisy = True, False
    images, labels = torch.randn(4, 3, 2), torch.tensor([2, 0, 0, 2])
    loss = method.loss(Batch(images, labels, [0, 2], SimpleNamespace(index=0, classes=[0, 2])))
    terms = list(method.bank.terms)
    assert len(terms) == 2  # one per adapted block
    method.bank.training = False
    features = learner.encode_images(images, adapters=method.bank.adapters())
    logits = 10.0 * features @ text[[0, 2]].t()
    expected = F.cross_entropy(logits, torch.tensor([1, 0, 0, 1]), label_smoothing=0.1) + 0.5 * (terms[0] + terms[1])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_activate_freeze_trains_only_the_experts_the_last_experiences_did_not_use_most():
    assert most_used([5, 0, 9, 9], 2) == [2, 3]  # ties: lower index first
    assert most_used([0, 3, 0, 0], 2) == [1]  # an expert never used is not frozen
    assert most_used([4, 1, 7], 0) == []
    learner, _ = fake_learner()
    method = MoEAdapters(MoEAdaptersParams(experts=4, ddas=False), learner)
    method.train(SimpleNamespace(index=0))
    first = {id(p) for p in learner.fit_calls[0]}
    assert first == {id(p) for b in "01" for name, p in method.bank.net[b].named_parameters()
                     if name.startswith("experts") or name in ("router.0", "noise.0")}  # every expert, router 0
    method.bank.usage.copy_(torch.tensor([[5, 0, 9, 9], [1, 2, 0, 0]]))  # images each expert served in experience 0
    method.after_experience(SimpleNamespace(index=0))
    assert method.frozen == {0: {2, 3}, 1: {0, 1}}
    method.train(SimpleNamespace(index=1))
    trained = {id(p) for p in learner.fit_calls[1]}
    expect = {(0, 0), (0, 1), (1, 2), (1, 3)}
    for b in (0, 1):
        layer = method.bank.net[str(b)]
        for e, expert in enumerate(layer["experts"]):
            for p in expert.parameters():
                assert (id(p) in trained) == ((b, e) in expect) and p.requires_grad == ((b, e) in expect)
        assert id(layer["router"][1]) in trained and id(layer["router"][0]) not in trained
    assert method.bank.usage.sum() == 0  # counts restart with each experience
    method.bank.usage.copy_(torch.tensor([[0, 6, 1, 9], [3, 3, 3, 0]]))
    method.after_experience(SimpleNamespace(index=1))
    assert method.frozen == {0: {1, 2, 3}, 1: {0, 1}}  # the union grows; experience 1's top experts of block 1 were frozen already
    assert method.record_extras()["expert_usage"] == [[[5, 0, 9, 9], [1, 2, 0, 0]], [[0, 6, 1, 9], [3, 3, 3, 0]]]


def hand_autoencoder():
    """D = 2, code 1: AE(z) = sigmoid((relu(z0), 0)) = (σ(relu(z0)), 1/2)."""
    autoencoder = make_autoencoder(2, 1)
    with torch.no_grad():
        autoencoder[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        autoencoder[0].bias.zero_()
        autoencoder[2].weight.copy_(torch.tensor([[1.0], [0.0]]))
        autoencoder[2].bias.zero_()
    return autoencoder


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_ddas_reconstruction_error_and_routing_by_hand():
    features = torch.tensor([[0.6, 0.8], [1.0, 0.0]])  # L2-normalised
    z = ddas_input(features)
    r2 = math.sqrt(2)
    assert z.flatten().tolist() == pytest.approx([sig(0.6 * r2), sig(0.8 * r2), sig(r2), 0.5], abs=1e-6)
    errors = reconstruction_error(hand_autoencoder(), z)
    by_hand = [((sig(a) - a) ** 2 + (0.5 - b) ** 2) / 2 for a, b in z.tolist()]
    assert errors.tolist() == pytest.approx(by_hand, abs=1e-7)
    # two autoencoders (columns); the best one per image decides; above its threshold -> zero-shot (-1)
    table = torch.tensor([[0.30, 0.10], [0.05, 0.20], [0.40, 0.35]])
    assert ddas_route(table, torch.tensor([0.5, 0.15])).tolist() == [1, 0, -1]  # image 2's best, 0.35 > 0.15
    assert ddas_route(table, torch.tensor([0.5, 0.05])).tolist() == [-1, 0, -1]  # image 0's best error 0.10 > 0.05
    assert ddas_route(table, torch.tensor([0.01, 0.5])).tolist() == [1, -1, 1]


def test_predict_sends_each_image_to_its_experiences_router_or_to_zero_shot_clip():
    learner, text = fake_learner()
    method = MoEAdapters(MoEAdaptersParams(experts=2, top_k=1), learner)
    torch.manual_seed(1)
    for p in method.bank.net.parameters():
        torch.nn.init.normal_(p)
    method.autoencoders = [hand_autoencoder(), make_autoencoder(2, 1)]
    with torch.no_grad():
        for p in method.autoencoders[1].parameters():
            p.zero_()  # AE_1(z) = (1/2, 1/2) for every z
    images = torch.tensor([[[1.0, 0.0], [0.3, 0.3]], [[0.0, 1.0], [0.1, 0.2]], [[0.6, 0.8], [0.0, 0.5]]])  # class tokens unit
    r2 = math.sqrt(2)
    z = [(sig(r2 * a), sig(r2 * b)) for a, b in ((1.0, 0.0), (0.0, 1.0), (0.6, 0.8))]
    error_0 = [((sig(max(a, 0.0)) - a) ** 2 + (0.5 - b) ** 2) / 2 for a, b in z]  # ≈ 0.0064, 0.0538, 0.0333
    error_1 = [((0.5 - a) ** 2 + (0.5 - b) ** 2) / 2 for a, b in z]  # ≈ 0.0463, 0.0463, 0.0529
    method.thresholds = [0.02, 0.05]
    # image 0: AE_0 best, 0.0064 <= 0.02 -> experience 0; image 1: AE_1 best, 0.0463 <= 0.05 -> experience 1;
    # image 2: AE_0 best, 0.0333 > 0.02 -> zero-shot CLIP
    assert error_0[0] < 0.02 < error_0[2] < error_1[2] and error_1[1] < min(0.05, error_0[1])
    route = [0, 1, -1]
    frozen = F.normalize(images[:, 0], dim=1)
    assert method.route(frozen).tolist() == route
    method.step, method.routing = 1, {1: torch.zeros(3, dtype=torch.long)}
    scores = method.predict(images, [0, 1, 2])
    for i, t in enumerate(route):
        if t < 0:
            expected = 10.0 * F.normalize(images[i:i + 1, 0], dim=1) @ text.t()  # zero-shot: no adapters
        else:
            method.bank.active = t
            expected = 10.0 * learner.encode_images(images[i:i + 1], adapters=method.bank.adapters()) @ text.t()
        assert torch.allclose(scores[i:i + 1], expected, atol=1e-6), i
    adapted = [learner.encode_images(images[:2], adapters=method.bank.adapters()) for method.bank.active in (0, 1)]
    assert not torch.allclose(adapted[0], adapted[1])  # the routers differ, so the choice matters
    assert method.routing[1].tolist() == [1, 1, 1]  # zero-shot, experience 0, experience 1
    extras = method.record_extras()
    assert extras["ddas_routing"] == [{"step": 1, "zero_shot": 1, "experience": [1, 1], "adapted_share": 2 / 3}]


def test_parameters_are_checked_before_anything_runs(tmp_path):
    from clbench.facts import StreamFacts

    with pytest.raises(ValueError, match="block 1 is listed twice"):
        MoEAdaptersParams(blocks=[1, 0, 1])
    with pytest.raises(ValueError, match="adapts no block"):
        MoEAdaptersParams(blocks=[])
    assert MoEAdaptersParams(blocks=[3, 1]).blocks == [1, 3]
    with pytest.raises(ValueError, match=r"write blocks: \[\[1, ...\]\]"):  # a grid point of a suite's `blocks: [0, 1]`
        MoEAdaptersParams(blocks=1)
    facts = StreamFacts(label="s", dataset="synthetic", scenario="class_incremental", steps=2, num_templates=2)
    assert MoEAdapters.check(MoEAdaptersParams(experts=2, top_k=3, template=2), facts, None) == {
        "top_k": "3 but experts is 2; use 1..2",
        "template": "2 but stream 's' (dataset synthetic) has 2 prompt templates; use 0..1"}
    learner, _ = fake_learner(blocks=2)
    with pytest.raises(ValueError) as info:
        MoEAdapters(MoEAdaptersParams(blocks=[0, 5]), learner)
    assert str(info.value) == "blocks: block 5 but the image tower has 2 blocks; use 0..1 or 'all'"
    assert MoEAdapters(MoEAdaptersParams(), learner).bank.blocks == [0, 1]  # 'all' follows the tower


def test_importing_the_method_does_not_import_torch():
    code = ("import sys, clbench_methods.moe_adapters as m; m.MoEAdaptersParams(); "
            "assert type(sys.modules.get('torch')).__name__ in ('NoneType', '_LazyModule'), 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# --- real runs on the tiny model ------------------------------------------------------------------------------
def test_training_changes_the_adapters_and_not_one_bit_of_clip():
    from clbench.config import TrainConfig
    from clbench.data.scenarios import build_stream
    from clbench.data.synthetic import build_synthetic
    from clbench.learner import Learner
    from clbench.models import build_clip

    torch.manual_seed(0)
    data = build_synthetic(num_classes=4, train_per_class=6, test_per_class=2, world_domains=["clean"])
    stream = build_stream(data, "class_incremental", 0, "s", steps=2)
    learner = Learner(build_clip("clbench-tiny-32"), stream, TrainConfig(batch_size=6, lr=1e-2, epochs=2), seed=0)
    method = MoEAdapters(MoEAdaptersParams(experts=3, ae_steps=5), learner)
    before = {k: v.clone() for k, v in learner.weights().items()}
    bank_before = {k: v.clone() for k, v in method.bank.net.state_dict().items()}
    for exp in stream.experiences:
        method.before_experience(exp)
        method.train(exp)
        method.after_experience(exp)
    assert all(torch.equal(before[k], v) for k, v in learner.weights().items())
    after = method.bank.net.state_dict()
    assert not torch.equal(after["0.router.0"], bank_before["0.router.0"])
    assert not torch.equal(after["1.router.1"], bank_before["1.router.1"])
    assert any(not torch.equal(after[k], bank_before[k]) for k in after if ".up." in k)
    assert len(method.autoencoders) == 2 and all(t > 0 for t in method.thresholds)


def test_a_tiny_cell_runs_records_its_routing_and_resumes_to_the_same_record(tmp_path, plugins):
    from clbench.plugins import Plugins, make_plugin_manager
    from clbench.runner import run_cell
    from clbench.testing import hub_offline

    from .test_reliability import Interrupt, cells_of, stable

    plugins.methods.register(MoEAdapters.name, MoEAdapters, "test")
    cell = cells_of(tmp_path, [{"name": "moe_adapters", "experts": 4, "ae_steps": 20}], plugins)[0]
    with hub_offline():
        whole = run_cell(cell, plugins, checkpoints=tmp_path / "a")
        interrupted = Plugins(make_plugin_manager())
        interrupted.methods.register(MoEAdapters.name, MoEAdapters, "test")
        interrupted.pm.register(Interrupt(0))  # stops once experience 0 is done (its checkpoint saved)
        with pytest.raises(KeyboardInterrupt):
            run_cell(cell, interrupted, checkpoints=tmp_path / "b")
        resumed = run_cell(cell, plugins, checkpoints=tmp_path / "b")
    assert whole["status"] == "done", whole.get("traceback")
    assert resumed["cost"]["resumed_at_experience"] == 1
    assert stable(resumed) == stable(whole)
    state = whole["method_state"]
    T = len(whole["experiences"])
    assert len(state["expert_usage"]) == T and len(state["thresholds"]) == T
    assert [r["step"] for r in state["ddas_routing"]] == list(range(T))
    tests = sum(e["test_size"] for e in whole["experiences"])
    assert all(r["zero_shot"] + sum(r["experience"]) == tests for r in state["ddas_routing"])  # every test image, every step
    assert state["blocks"] == [0, 1] and "DDAS" in state["formula"]
    assert whole["memory"]["bytes"]["adapters"] > 0 and whole["memory"]["bytes"]["autoencoders"] > 0

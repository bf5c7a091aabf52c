"""Statistics of the replay memory (clbench/buffer.py): who gets in, in what shares, and how batches are drawn.

The figures quoted for the old rule come from the buffer before this file
existed (reservoir slots replaced one by one while the capacity grew;
class_balanced splitting old/new with ``round``; ``sample`` with
replacement).
"""
import io
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import clbench.sampling as sampling_module
from clbench.buffer import BufferSpec, ReplayBuffer, split_quota
from clbench.sampling import swing_range, water_fill
from clbench.data.base import InMemoryImageSet


def images(labels, first_id: int) -> InMemoryImageSet:
    """One 1x1 image per label; dataset ids first_id, first_id + 1, ... name the images."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    ids = torch.arange(first_id, first_id + len(labels))
    return InMemoryImageSet((ids % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 1, 1).clone(), labels, ids=ids)


def feed(buf: ReplayBuffer, stream, seen_of=None):
    """Update ``buf`` with each experience of ``stream`` (lists of labels); yields after each update."""
    first, seen = 0, []
    for t, labels in enumerate(stream):
        seen = seen_of(t) if seen_of else seen + [c for c in dict.fromkeys(labels) if c not in seen]
        buf.update(images(labels, first), list(seen))
        first += len(labels)
        yield t, seen


def held_ids(buf: ReplayBuffer) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.long) if buf.data is None else buf.data.ids


def inclusion_frequencies(stream, spec: dict, seeds: int, seen_of=None) -> list[torch.Tensor]:
    """Per step t, the fraction of seeds whose memory holds each image offered through t."""
    total = sum(map(len, stream))
    sizes = list(itertools.accumulate(map(len, stream)))
    freq = [torch.zeros(n) for n in sizes]
    for seed in range(seeds):
        buf = ReplayBuffer(BufferSpec(**spec), total, seed=seed)
        for t, _ in feed(buf, stream, seen_of):
            freq[t][held_ids(buf)] += 1
    return [f / seeds for f in freq]


def assert_within(observed: torch.Tensor, expected: torch.Tensor, trials: int, sigmas: float):
    """Each observed frequency within ``sigmas`` binomial standard errors of its probability."""
    se = (expected * (1 - expected) / trials).sqrt()
    assert ((observed - expected).abs() <= sigmas * se + 1e-12).all(), (observed, expected)


# --- inclusion probabilities, by Monte Carlo ----------------------------------------------------

def test_reservoir_with_a_growing_capacity_keeps_every_image_with_probability_k_over_n():
    # per_class 2, three class-incremental experiences of 2 classes x 6 images:
    # K = 2*2 = 4, 8, 12 and N = 12, 24, 36, so after every step each image is in memory
    # with probability K/N = 4/12 = 8/24 = 12/36 = 1/3.
    stream = [[2 * t] * 6 + [2 * t + 1] * 6 for t in range(3)]
    seeds = 1200
    freq = inclusion_frequencies(stream, {"per_class": 2, "policy": "reservoir"}, seeds)
    for t, f in enumerate(freq):
        expected = torch.full_like(f, 1 / 3)
        # per image: 72 frequencies in all, so 4 sigma (a false alarm somewhere ~0.5 %)
        assert_within(f, expected, seeds, 4.0)
        # per experience (12 images each): 3 sigma of the binomial error over 12 * seeds draws
        per_experience = f.view(-1, 12).mean(1)
        assert_within(per_experience, torch.full_like(per_experience, 1 / 3), 12 * seeds, 3.0)


def test_class_balanced_over_domains_keeps_every_image_with_probability_quota_over_seen():
    # per_class 2, classes 0 and 1 in each of 4 domains, 5 images of each class per domain.
    # After domain t (1-based) a class has been offered N_c = 5t images and keeps 2, so each
    # image is in memory with probability 2/(5t): 0.4, 0.2, 0.1333, 0.1.
    stream = [[0] * 5 + [1] * 5 for _ in range(4)]
    seeds = 1200
    freq = inclusion_frequencies(stream, {"per_class": 2}, seeds, seen_of=lambda t: [0, 1])
    for t, f in enumerate(freq):
        p = 2 / (5 * (t + 1))
        assert_within(f, torch.full_like(f, p), seeds, 4.0)  # 100 images over the 4 steps
        # per (domain, class) block of 5 images: expected count 5p = 2/(t+1), within 3 sigma
        per_block = f.view(-1, 5).mean(1)
        assert_within(per_block, torch.full_like(per_block, p), 5 * seeds, 3.0)


def test_unequal_domains_keep_inclusion_exact():
    # Domains offer (class 0, class 1) = (5,5), (8,7), (3,2), (7,9), (3,11) images; size 5 gives
    # quotas {0: 3, 1: 2}. Cumulative N_0 = 5, 13, 16, 23, 26 and N_1 = 5, 12, 14, 23, 34, so after
    # step t an image of class 0 is held with probability 3/N_0 (0.6, 0.2308, 0.1875, 0.1304,
    # 0.1154) and one of class 1 with 2/N_1 (0.4, 0.1667, 0.1429, 0.0870, 0.0588). The blocks are
    # of unequal size, so later steps thin blocks that may hold fewer exemplars than their share
    # (the surplus absorbed by the other blocks, and at one step a single lam for the pool).
    counts = [(5, 5), (8, 7), (3, 2), (7, 9), (3, 11)]
    stream = [[0] * a + [1] * b for a, b in counts]
    seeds = 1200
    freq = inclusion_frequencies(stream, {"size": 5}, seeds, seen_of=lambda t: [0, 1])
    labels = torch.tensor(sum(stream, []))
    for t, f in enumerate(freq):
        lab = labels[: len(f)]
        n0, n1 = int((lab == 0).sum()), int((lab == 1).sum())
        expected = torch.where(lab == 0, 3 / n0, 2 / n1)
        assert_within(f, expected, seeds, 4.0)


# --- the two examples that showed the bias ----------------------------------------------------

def test_growing_reservoir_stores_each_experience_equally():
    # Reservoir, per_class 5, three class-incremental experiences of 2 classes x 50 images
    # (capacity 10, 20, 30). The old rule kept on average 3.80 / 10.23 / 15.97 exemplars of
    # experiences 1 / 2 / 3 (seeds 0-199); K/N is 1/10 after every step, so the fair share is 10 each.
    stream = [[2 * t] * 50 + [2 * t + 1] * 50 for t in range(3)]
    for seed in range(40):
        buf = ReplayBuffer(BufferSpec(per_class=5, policy="reservoir"), 300, seed=seed)
        for t, _ in feed(buf, stream):
            assert buf.origin_counts() == {e: 10 for e in range(t + 1)}


def test_domain_incremental_memory_stores_the_fourth_domain():
    # class_balanced, per_class 2, classes 0 and 1 in 4 domains of 50 images each. The old rule kept
    # round(2 * 150/200) = 2 old exemplars at the 4th domain, so the 4th domain was never stored,
    # for any seed. Now each (class, domain) holds floor or ceil of its share 2 * 50 / (50 t).
    stream = [[0] * 50 + [1] * 50 for _ in range(4)]
    fourth = 0
    for seed in range(40):
        buf = ReplayBuffer(BufferSpec(per_class=2), 400, seed=seed)
        for t, _ in feed(buf, stream, seen_of=lambda t: [0, 1]):
            share = 2 / (t + 1)
            for c in (0, 1):
                held = buf.origin[buf.data.labels == c]
                assert len(held) == 2
                for e in range(t + 1):
                    assert math.floor(share) <= int((held == e).sum()) <= math.ceil(share)
        fourth += int((buf.origin == 3).sum())
        # over both classes each domain holds its share of the 4 exemplars, 1, within one exemplar
        assert all(abs(int((buf.origin == e).sum()) - 1) <= 1 for e in range(4))
    # each class keeps a 4th-domain exemplar with probability 1/2 (its share); the two classes' systematic
    # starts are spread over [0, 1), so exactly one of them does, in every seed
    assert fourth == 40


# --- properties over many streams -------------------------------------------------------------

streams = st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=25), min_size=1, max_size=5)
capacities = st.one_of(st.builds(lambda v: {"size": v}, st.integers(0, 20)),
                       st.builds(lambda v: {"per_class": v}, st.integers(0, 4)),
                       st.builds(lambda v: {"fraction": v}, st.floats(0, 0.6)))


@settings(max_examples=80, deadline=None)
@given(streams, capacities, st.sampled_from(["class_balanced", "reservoir"]), st.integers(0, 2**31))
def test_memory_size_is_exact_and_capacity_never_exceeded(stream, capacity, policy, seed):
    def fill():
        buf = ReplayBuffer(BufferSpec(**capacity, policy=policy), sum(map(len, stream)) or 1, seed=seed)
        before: dict[int, int] = {}
        first = 0
        for t, seen in feed(buf, stream):
            k = buf.capacity(len(seen))
            assert len(buf) <= k and len(buf.origin) == len(buf)
            new = torch.bincount(torch.tensor(stream[t], dtype=torch.long), minlength=6).tolist()
            counts = buf.class_counts()
            if policy == "reservoir":
                assert len(buf) == min(k, sum(before.values()) + len(stream[t]))
            else:  # each class holds its quota, or everything it can still hold
                quota = split_quota(k, seen)
                for c in seen:
                    assert counts.get(c, 0) == min(quota[c], before.get(c, 0) + new[c])
            assert set(buf.origin_counts()) <= set(range(t + 1))
            assert (held_ids(buf) < first + len(stream[t])).all()
            first += len(stream[t])
            before = counts
        return buf

    a, b = fill(), fill()
    assert torch.equal(held_ids(a), held_ids(b)) and torch.equal(a.origin, b.origin)  # same seed, same memory


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 12), st.integers(1, 3), st.sampled_from(["class", "domain"]),
       capacities, st.integers(0, 2**31))
def test_reservoir_experience_counts_are_within_one_of_proportional(steps, n, k, scenario, capacity, seed):
    # Experiences of n images each, k classes per experience: new classes each time (class-incremental)
    # or the same ones (domain-incremental). K/N never grows (per_class grows K with N in step), so
    # after step t each experience's share is p = n * min(1, K/N) and its count is floor(p) or ceil(p).
    g = torch.Generator().manual_seed(seed)
    stream = [(torch.randint(0, k, (n,), generator=g) + (k * t if scenario == "class" else 0)).tolist()
              for t in range(steps)]
    seen_of = (lambda t: list(range(k * (t + 1)))) if scenario == "class" else (lambda t: list(range(k)))
    buf = ReplayBuffer(BufferSpec(**capacity, policy="reservoir"), steps * n, seed=seed)
    for t, seen in feed(buf, stream, seen_of):
        p = n * min(1.0, buf.capacity(len(seen)) / (n * (t + 1)))
        counts = buf.origin_counts()
        for e in range(t + 1):
            assert math.floor(p + 1e-9) <= counts.get(e, 0) <= math.ceil(p - 1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.integers(1, 5), capacities, st.integers(0, 2**31))
def test_class_balanced_domain_counts_are_within_one_of_proportional(per_domain, steps, capacity, seed):
    # Domain-incremental: every domain offers per_domain[c] images of class c. Class c's quota q_c is
    # fixed, so after domain t each (class, domain) share is p = per_domain[c] * min(1, q_c / N_c),
    # N_c = per_domain[c] * (t + 1); its count is floor(p) or ceil(p), and classes stay balanced.
    classes = list(range(len(per_domain)))
    g = torch.Generator().manual_seed(seed)
    stream = []
    for _ in range(steps):
        labels = torch.tensor(sum(([c] * n for c, n in enumerate(per_domain)), []))
        stream.append(labels[torch.randperm(len(labels), generator=g)].tolist())
    total = steps * sum(per_domain)
    buf = ReplayBuffer(BufferSpec(**capacity), total, seed=seed)
    for t, _ in feed(buf, stream, lambda t: classes):
        quota = split_quota(buf.capacity(len(classes)), classes)
        for c, n in enumerate(per_domain):
            p = n * min(1.0, quota[c] / (n * (t + 1)))
            held = buf.origin[buf.data.labels == c] if len(buf) else torch.zeros(0, dtype=torch.long)
            for e in range(t + 1):
                assert math.floor(p + 1e-9) <= int((held == e).sum()) <= math.ceil(p - 1e-9)


@settings(max_examples=40, deadline=None)
@given(streams, capacities, st.sampled_from(["class_balanced", "reservoir"]), st.integers(0, 2**31), st.integers(0, 4))
def test_checkpoint_round_trip_gives_the_same_future(stream, capacity, policy, seed, cut):
    cut = min(cut, len(stream))
    total = sum(map(len, stream)) or 1
    a = ReplayBuffer(BufferSpec(**capacity, policy=policy), total, seed=seed)
    list(feed(a, stream[:cut]))
    saved = io.BytesIO()
    torch.save(a.state_dict(), saved)
    saved.seek(0)
    b = ReplayBuffer(BufferSpec(**capacity, policy=policy), total, seed=seed + 1)  # another generator, overwritten
    b.load_state_dict(torch.load(saved, weights_only=True))  # checkpoints are read without unpickling code

    def future(buf):
        out = []
        first = sum(map(len, stream[:cut]))
        seen = list(dict.fromkeys(c for labels in stream[:cut] for c in labels))
        for labels in stream[cut:]:
            seen += [c for c in dict.fromkeys(labels) if c not in seen]
            buf.update(images(labels, first), list(seen))
            first += len(labels)
            out.append(held_ids(buf).tolist())
            if len(buf):
                out.append(buf.sample(7)[2].tolist())
        return out, buf.origin.tolist()

    assert future(a) == future(b)


def test_a_capacity_that_outgrows_the_data_falls_back_and_stays_exact(monkeypatch):
    # reservoir, per_class 1, one class per experience of 1, 3, 1, 2, 3 images: K/N = 1, 1/2, 3/5 (it
    # grows: the memory cannot be topped up from dropped images), 4/7, 1/2. At the last step no single
    # lam fits every block, so the memory is thinned by what it holds: a second water-filling.
    calls = []
    real = sampling_module.water_fill
    monkeypatch.setattr(sampling_module, "water_fill", lambda *a: calls.append(1) or real(*a))
    stream = [[t] * n for t, n in enumerate([1, 3, 1, 2, 3])]
    for seed in range(30):
        buf = ReplayBuffer(BufferSpec(per_class=1, policy="reservoir"), 10, seed=seed)
        for t, _ in feed(buf, stream):
            if t < 4:
                calls.clear()
        assert len(calls) == 2  # the last update needed the fallback
        assert len(buf) == 5 and set(buf.origin.tolist()) <= set(range(5))


# --- sample() -------------------------------------------------------------------------------

def filled(size: int, offered: int, seed: int = 0) -> ReplayBuffer:
    buf = ReplayBuffer(BufferSpec(size=size), offered, seed=seed)
    buf.update(images([i % 10 for i in range(offered)], 0), list(range(10)))
    assert len(buf) == min(size, offered)
    return buf


def test_replay_batches_have_no_duplicates():
    # The old sample drew with replacement: about 128 * 127 / (2 * 500) ~ 15 repeats per batch of 128
    # from 500 exemplars (14.9 measured over 200 batches).
    buf = filled(500, 1000)
    for _ in range(50):
        imgs, labels, ids = buf.sample(128)
        assert len(ids.unique()) == 128
        assert torch.equal(imgs[:, 0, 0, 0], (ids % 256).to(torch.uint8)) and torch.equal(labels, ids % 10)
    assert sorted(buf.sample(500)[2].tolist()) == sorted(buf.data.ids.tolist())  # the whole memory, once each


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(0, 70), st.integers(0, 2**31))
def test_a_batch_larger_than_the_memory_is_the_whole_memory_once(size, n, seed):
    # as Mammoth's Buffer.get_data: the batch is capped at what the memory holds, never padded with repeats
    buf = filled(size, 20, seed)
    _, labels, ids = buf.sample(n)
    assert len(ids) == min(n, size) and len(ids.unique()) == len(ids)


def test_sample_rejects_what_it_cannot_draw():
    empty = ReplayBuffer(BufferSpec(size=3), 10, seed=0)
    with pytest.raises(ValueError, match="empty replay memory"):
        empty.sample(4)
    with pytest.raises(ValueError, match=">= 0"):
        filled(3, 10).sample(-1)
    assert filled(3, 10).sample(0)[0].shape == (0, 3, 1, 1)


# --- helpers, by hand ---------------------------------------------------------------------------

def test_water_fill_caps_and_shares_the_rest():
    # group 0: weights 10, 10, 10, caps 1, 100, 100, target 9. Level 9/30 would give 3 to the first,
    # above its cap 1; capped, the other two share 9 - 1 = 8 in proportion: 4 and 4.
    # group 1: target 50 above its caps 2 + 3: every entry gets its cap.
    out = water_fill(torch.tensor([10.0, 10, 10, 1, 1], dtype=torch.float64),
                     torch.tensor([1.0, 100, 100, 2, 3], dtype=torch.float64),
                     torch.tensor([0, 0, 0, 1, 1]), torch.tensor([9.0, 50.0], dtype=torch.float64))
    assert out.tolist() == pytest.approx([1, 4, 4, 2, 3])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(-2, 0), st.floats(0, 2)), min_size=1, max_size=5),
       st.floats(0, 1))
def test_swing_range_is_the_extreme_of_the_linear_programme(entries, where):
    # brute force: an optimum over the box cut by sum x = total has at most one entry off its bounds
    a = torch.tensor([e[0] for e in entries], dtype=torch.float64)
    low = torch.tensor([e[1] for e in entries], dtype=torch.float64)
    high = torch.tensor([e[2] for e in entries], dtype=torch.float64)
    total = float(low.sum() + where * (high.sum() - low.sum()))
    values = []
    for free in range(len(entries)):
        others = [j for j in range(len(entries)) if j != free]
        for bounds in itertools.product((0, 1), repeat=len(others)):
            x = [0.0] * len(entries)
            for j, b in zip(others, bounds):
                x[j] = float(high[j] if b else low[j])
            x[free] = total - sum(x[j] for j in others)
            if low[free] - 1e-9 <= x[free] <= high[free] + 1e-9:
                values.append(float(sum(a[j] * x[j] for j in range(len(entries)))))
    least, largest = swing_range(a, low, high, torch.tensor([total], dtype=torch.float64),
                                 torch.zeros(len(entries), dtype=torch.long), 1)
    assert float(least[0]) == pytest.approx(min(values), abs=1e-9)
    assert float(largest[0]) == pytest.approx(max(values), abs=1e-9)

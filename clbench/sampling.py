"""Selecting a replay memory with exact inclusion probabilities and balanced experience shares.

How the two random policies select (:func:`select`).
The memory is split into *pools* (one per class for ``class_balanced``, a
single one for ``reservoir``) and each pool into *blocks*: the images one
experience offered to that pool. Per block the buffer keeps N_e (images
offered), m_e (exemplars held in expectation) and bounds lo_e <= h_e <= hi_e
that every possible history respects (h_e: exemplars held now). After an
experience each pool is re-selected to exactly r = min(quota, held + new):

1. Block targets p_e = min(m_e, t N_e), one level t per pool with
   sum_e p_e = r (``water_fill``). Unless a capacity grew faster than the
   data, t = r / N (N: images the pool was offered so far) and p_e is the
   proportional share of block e.
2. Realised block totals S_e, chosen so that E[S_e] = p_e, sum_e S_e = r and
   0 <= S_e <= h_e for every history. A block that surely holds at least
   p_e gets S_e = p_e. A block that may hold less ("tight", lo_e < p_e) is
   thinned: S_e = p_e + lam_e (h_e - m_e), lam_e = (p_e - lo_e)/(m_e - lo_e).
   The other blocks of the pool absorb that random surplus, each staying
   within [floor p_e, ceil p_e] (its range is a small linear programme,
   ``swing_range``). Where they cannot, one lam for the whole pool (the
   smallest that fits every block; lam = p_e/m_e is plain
   probability-proportional thinning), and where no single lam fits (only
   after a capacity outgrew the data), a water-filling over what the blocks
   hold now, weighted by 1 / inclusion probability.
3. Each exemplar of block e is kept with probability S_e / h_e: the pool's
   items are laid out block by block (random order inside a block, from the
   buffer's generator) and selected by systematic sampling with unequal
   probabilities (one uniform start, unit steps; Madow 1949; Tillé,
   "Sampling Algorithms", 2006, ch. 7). Each item is kept with exactly its
   probability, the pool keeps exactly r items and each block
   floor(S_e) or ceil(S_e).

Since a block's images are exchangeable and E[S_e] = p_e, each image offered
so far is in the memory with probability p_e / N_e = t: K / N for
``reservoir``, quota_c / N_c for ``class_balanced`` (checked by Monte Carlo in
tests/test_buffer_sampling.py). With S_e = p_e (no tight block, or its
surplus absorbed) every block's count is within one exemplar of its
proportional share; this always holds when the experiences offer a pool
equally many images and the capacity does not outgrow the data. A single
lam or the last resort can leave a block more than one exemplar (under two
in our stress tests) off its share; the single lam keeps the inclusion
probabilities exact, the last resort only approximates them. When a capacity grows
faster than the data (``per_class`` with a small later experience),
images dropped earlier cannot come back: they keep their lower probability
and the images still available share the rest equally.
"""
from __future__ import annotations

from typing import Callable

import lazy_loader as lazy

torch = lazy.load("torch")

_SCALE = 1 << 30  # fixed-point unit of the systematic sampler: one exemplar = 2**30
_ONE = 1.0 - 1e-8  # an inclusion probability at least this large is taken as 1
BLOCK_KEYS = ("pool", "origin", "offered", "expected", "low", "high")


def water_fill(weight: torch.Tensor, cap: torch.Tensor, group: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per group g, allocations a_e = min(cap_e, level_g * weight_e) with sum_{e in g} a_e = target_g.

    ``weight`` (B,) > 0 and ``cap`` (B,) >= 0 are float64, ``group`` (B,) int64 in
    [0, G), ``target`` (G,) float64. Entries whose cap is reached keep their cap and
    the rest is shared in proportion to ``weight`` (how inclusion probabilities
    proportional to a size are capped at one in unequal-probability designs). A group whose
    target is at least the sum of its caps gets every cap. Returns ``a`` (B,).
    """
    n = len(weight)
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    breakpoint_ = cap / weight  # level at which an entry reaches its cap
    order = torch.argsort(breakpoint_, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # by group, then by breakpoint
    g, w, u, b = group[order], weight[order], cap[order], breakpoint_[order]
    n_groups = len(target)
    counts = torch.bincount(g, minlength=n_groups)
    start = torch.cumsum(counts, 0) - counts
    before_u = torch.cumsum(u, 0) - u
    before_w = torch.cumsum(w, 0) - w
    capped_u = before_u - before_u[start[g]]  # caps of the entries before this one in its group
    group_w = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, w)
    rest_w = group_w[g] - (before_w - before_w[start[g]])  # weight of this entry and the ones after it
    level = (target[g] - capped_u) / rest_w  # level if exactly the entries before this one are capped
    fits = level <= b * (1 + 1e-12) + 1e-300  # ... and this one is not
    first = torch.full((n_groups,), n, dtype=torch.long)
    first.scatter_reduce_(0, g[fits], torch.arange(n)[fits], "amin")
    group_level = torch.full((n_groups,), float("inf"), dtype=torch.float64)
    found = first < n
    group_level[found] = level[first[found]]
    out = torch.empty(n, dtype=torch.float64)
    out[order] = torch.minimum(u, group_level[g] * w)
    return out


def swing_range(a: torch.Tensor, low: torch.Tensor, high: torch.Tensor, total: torch.Tensor,
                group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, the least and largest sum_e a_e x_e over low_e <= x_e <= high_e with sum_e x_e = total_g.

    A linear programme over a box cut by one equation; solved through its dual,
    max = min over c of c * total + sum_e max((a_e - c) low_e, (a_e - c) high_e), whose
    optimum lies at c = 0 or c = some a_e of the group (and the min likewise).
    ``group`` must be sorted. Returns two (G,) float64 tensors.
    """
    counts = torch.bincount(group, minlength=n_groups)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(group)) - start[group]
    width = int(counts.max()) if len(group) else 0
    pad = torch.zeros(n_groups, width, dtype=torch.float64)
    A, L, H = pad.clone(), pad.clone(), pad.clone()
    A[group, slot], L[group, slot], H[group, slot] = a, low, high
    c = torch.cat([A, torch.zeros(n_groups, 1, dtype=torch.float64)], 1)[:, :, None]  # candidates (G, K, 1)
    diff = A[:, None, :] - c
    base = c[:, :, 0] * total[:, None]
    largest = (base + torch.maximum(diff * L[:, None, :], diff * H[:, None, :]).sum(2)).amin(1)
    least = (base + torch.minimum(diff * L[:, None, :], diff * H[:, None, :]).sum(2)).amax(1)
    return least, largest


def no_blocks() -> dict[str, torch.Tensor]:
    """The block table of an empty memory."""
    return {"pool": torch.zeros(0, dtype=torch.long), "origin": torch.zeros(0, dtype=torch.long),
            "offered": torch.zeros(0, dtype=torch.long), "expected": torch.zeros(0, dtype=torch.float64),
            "low": torch.zeros(0, dtype=torch.long), "high": torch.zeros(0, dtype=torch.long)}


def select(blocks: dict[str, torch.Tensor], pool_of: torch.Tensor, origin: torch.Tensor, n_old: int, experience: int,
           quota_of: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """(positions of the exemplars to keep, the new block table), as the module docstring describes.

    ``blocks``: the table from the previous call (``no_blocks()`` at first);
    ``pool_of`` (L,) pool id of every item, ``origin`` (L,) its experience; the
    first ``n_old`` items are the current memory, the rest the new images;
    ``quota_of`` maps pool ids (P,) to their quotas (P,); ``generator`` the
    memory's own random stream.
    """
    n_items = len(pool_of)
    if n_items == 0:
        return torch.zeros(0, dtype=torch.long), blocks
    ids = torch.unique(torch.cat([blocks["pool"], pool_of]))  # every pool id, sorted
    n_pools = len(ids)
    item_pool = torch.searchsorted(ids, pool_of)
    target = torch.minimum(quota_of(ids), torch.bincount(item_pool, minlength=n_pools))
    # blocks: the ones on record, then one per pool for this experience's images
    new_count = torch.bincount(item_pool[n_old:], minlength=n_pools)
    new_pools = (new_count > 0).nonzero().flatten()
    b_pool = torch.cat([torch.searchsorted(ids, blocks["pool"]), new_pools])
    b_origin = torch.cat([blocks["origin"], torch.full((len(new_pools),), experience, dtype=torch.long)])
    b_offered = torch.cat([blocks["offered"], new_count[new_pools]])
    m = torch.cat([blocks["expected"], new_count[new_pools].double()])
    lo = torch.cat([blocks["low"], new_count[new_pools]]).double()
    hi = torch.cat([blocks["high"], new_count[new_pools]]).double()
    span = experience + 1
    b_key = b_pool * span + b_origin
    order = torch.argsort(b_key)
    b_key, b_pool, b_origin, b_offered = b_key[order], b_pool[order], b_origin[order], b_offered[order]
    m, lo, hi = m[order], lo[order], hi[order]
    n_blocks = len(b_key)
    item_key = item_pool * span + origin
    item_block = torch.searchsorted(b_key, item_key).clamp(max=n_blocks - 1)
    if not torch.equal(b_key[item_block], item_key):
        raise RuntimeError("replay memory and its block table disagree (a state from another version?)")
    h = torch.bincount(item_block, minlength=n_blocks).double()  # exemplars held (all images of a new block)

    def per_pool(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_pools, dtype=torch.float64).index_add_(0, b_pool, values.double())

    # 1. ideal block totals p (expected exemplars), one inclusion level per pool
    p = water_fill(b_offered.double(), m, b_pool, target.double())
    # 2. realised block totals S with E[S] = p, sum_pool S = target, 0 <= S <= h for every history
    spread = m - lo
    uncertain = spread > 1e-9
    tight = uncertain & (p > lo + 1e-9)  # might hold fewer than p: thin in proportion to the surplus
    lam = torch.where(tight, (p - lo) / spread.clamp(min=1e-300), torch.zeros_like(p))
    swing = per_pool(lam * (h - m))  # realised surplus taken out of the tight blocks
    swing_lo, swing_hi = swing_range(lam, lo - m, hi - m, per_pool(h - m), b_pool, n_pools)
    has_tight = per_pool(tight.double()) > 0
    # (a) the other blocks make up for the swing, each staying within [floor p, ceil p]
    frac = p - torch.floor(p)
    whole = (frac < 1e-9) | (frac > 1 - 1e-9)
    inf = torch.full_like(p, float("inf"))
    room = torch.minimum(torch.where(swing_hi[b_pool] > 0, frac / swing_hi[b_pool], inf),
                         torch.where(swing_lo[b_pool] < 0, (1 - frac) / -swing_lo[b_pool], inf))
    room = torch.where(tight | whole, torch.zeros_like(room), room)
    share = per_pool(room)
    steady = (swing_hi <= 1e-12) & (swing_lo >= -1e-12)  # the tight blocks' surplus cannot vary
    compensate = has_tight & (steady | (share >= 1 - 1e-12))
    weight = torch.where((compensate & ~steady)[b_pool], room / share[b_pool], torch.zeros_like(room))
    weight = torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight))
    # (b) else one lam for the whole pool (0 <= S <= h for every h the history allows)
    need = torch.zeros(n_pools, dtype=torch.float64).scatter_reduce(
        0, b_pool[uncertain], ((p - lo) / spread)[uncertain].clamp(min=0), "amax")
    allow = torch.ones(n_pools, dtype=torch.float64).scatter_reduce(
        0, b_pool[uncertain], (p / spread)[uncertain], "amin")
    uniform = has_tight & ~compensate & (need <= allow + 1e-9)
    common = torch.where(uniform, need, torch.zeros_like(need))[b_pool]
    lam = torch.where(uniform[b_pool], common, lam)
    total = p + lam * (h - m) - weight * swing[b_pool]
    low = p + lam * (lo - m) - weight * swing_hi[b_pool]
    high = p + lam * (hi - m) - weight * swing_lo[b_pool]
    # (c) else thin each block in proportion to what it holds, weighted by 1 / inclusion probability
    fallback = has_tight & ~compensate & ~uniform
    if bool(fallback.any()):
        heft = torch.where(h > 0, h * b_offered / m.clamp(min=1e-300), torch.ones_like(h))
        realised = water_fill(heft, h, b_pool, target.double())
        fb = fallback[b_pool]
        total, low, high = (torch.where(fb, realised, x) for x in (total, low, high))
        p = torch.where(fb, realised, p)
    total = torch.minimum(total.clamp(min=0), h)

    # 3. systematic sampling within each pool: blocks in origin order, random order inside a block
    pi = total[item_block] / h[item_block].clamp(min=1)
    certain = pi >= _ONE
    pi = torch.where(certain, torch.zeros_like(pi), pi)
    perm = torch.randperm(n_items, generator=generator)
    sort_key = (item_pool * 2 + (~certain).long()) * n_blocks + item_block  # the sure ones first
    perm = perm[torch.argsort(sort_key[perm], stable=True)]
    p_pool, p_pi, p_certain = item_pool[perm], pi[perm], certain[perm]
    counts = torch.bincount(p_pool, minlength=n_pools)
    start = torch.cumsum(counts, 0) - counts
    cum = torch.cumsum(p_pi, 0)
    local = cum - (cum - p_pi)[start[p_pool]]
    residual = target - torch.bincount(p_pool, minlength=n_pools, weights=p_certain.double()).round().long()
    end = residual.clamp(min=0) * _SCALE
    upper = torch.minimum(torch.round(local * _SCALE).long(), end[p_pool])
    nonempty = counts > 0
    upper[(start + counts - 1)[nonempty]] = end[nonempty]
    lower = torch.cat([torch.zeros(1, dtype=torch.long), upper[:-1]])
    lower[start[nonempty]] = 0
    # one uniform start per pool, the pools' starts spread evenly over [0, 1) around a shared random shift
    # (each is still uniform, so inclusion probabilities are unchanged): pools with alike layouts, e.g. the
    # classes of a domain-incremental stream, then round their blocks up in turn, and each experience's total
    # over all pools stays close to its share instead of adding up independent roundings
    shift = torch.randint(0, _SCALE, (1,), generator=generator)
    u = ((shift + torch.randperm(n_pools, generator=generator) * _SCALE // n_pools) % _SCALE)[p_pool]

    def hits(x: torch.Tensor) -> torch.Tensor:  # how many of u, u + SCALE, u + 2 SCALE, ... lie below x
        return -torch.div(u - x, _SCALE, rounding_mode="floor")

    chosen = p_certain | (hits(upper) > hits(lower))
    keep = perm[chosen]

    held_after = torch.bincount(item_block[keep], minlength=n_blocks)
    keep_block = (p > 1e-12) | (held_after > 0)
    table = {"pool": ids[b_pool][keep_block], "origin": b_origin[keep_block],
                   "offered": b_offered[keep_block], "expected": p[keep_block],
                   "low": torch.floor(low + 1e-9).clamp(min=0).long()[keep_block],
                   "high": torch.ceil(high - 1e-9).clamp(min=0).long()[keep_block]}
    return keep, table

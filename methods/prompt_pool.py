"""Prompt-pool maths shared by ``l2p`` and ``coda_prompt``: key–query selection, composition, penalties, initialisation.

Pure functions on tensors, no Learner: each is tested by hand on a tiny pool
(tests/test_prompt_methods.py).

L2P (Wang et al. CVPR 2022; JH-LEE-KR/l2p-pytorch ``prompt.py``, google-research/l2p
``models/prompt.py``): a pool of M prompts P_m (Lp, W) with keys k_m; a query q picks the N
prompts whose keys are closest in cosine (:func:`select_top_k`, optionally one set for the
whole batch by majority, :func:`batchwise_majority`); the picked prompts are concatenated
(:func:`gather_prompts`) and the keys are pulled towards the queries that picked them
(:func:`pull_constraint`).

CODA-Prompt (Smith et al. CVPR 2023; GT-RIPL/CODA-Prompt ``models/zoo.py``, class
``CodaPrompt``): components P_m with keys K_m and attention vectors A_m; weights
α_m = cos(q ⊙ A_m, K_m) (:func:`coda_weights`), prompt Σ_m α_m P_m (:func:`compose`);
``||T Tᵀ − I||²`` averaged over entries (:func:`ortho_penalty`); new components initialised
orthonormal to each other and to the earlier ones (:func:`gram_schmidt`).
"""
from __future__ import annotations

import lazy_loader as lazy

torch = lazy.load("torch")


# --- L2P ------------------------------------------------------------------------------------
def select_top_k(query: "torch.Tensor", keys: "torch.Tensor", top_k: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(indices (B, N), cosine similarities (B, M)): each query's N most similar keys, most similar first.

    ``query`` (B, D), ``keys`` (M, D); neither needs to be normalised. Ties go to the lower index.
    """
    sim = torch.nn.functional.normalize(query.float(), dim=-1) @ torch.nn.functional.normalize(keys.float(), dim=-1).t()
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices  # stable: equal similarities keep index order
    return order[:, :top_k], sim


def batchwise_majority(idx: "torch.Tensor", pool_size: int) -> "torch.Tensor":
    """The N prompts the batch picked most often, the same for every image (B, N); most frequent first, ties to the lower id.

    L2P's ``batchwise_prompt``: counts of every id over the batch's (B, N) picks, then the N
    largest counts (``jnp.unique`` + ``lax.top_k`` in the JAX reference, which keep id order on ties).
    Every row holds N distinct ids, so at least N ids have a count above zero.
    """
    B, N = idx.shape
    major = torch.sort(id_counts(idx, pool_size), descending=True, stable=True).indices[:N]
    return major.unsqueeze(0).expand(B, N)


def id_counts(idx: "torch.Tensor", size: int) -> "torch.Tensor":
    """How often each id in 0..size-1 occurs in ``idx`` (any shape): int64 (size,), as ``torch.bincount(idx, minlength=size)``
    but without reading the largest id on the host (bincount's output size depends on it, a sync on a GPU)."""
    flat = idx.reshape(-1)
    return torch.zeros(size, dtype=torch.long, device=idx.device).scatter_add_(0, flat, torch.ones_like(flat))


def gather_prompts(prompts: "torch.Tensor", idx: "torch.Tensor") -> "torch.Tensor":
    """The picked prompts of each image, concatenated in the order of ``idx``: (B, N·Lp, W) from (M, Lp, W) and (B, N)."""
    M, L, W = prompts.shape
    B, N = idx.shape
    picked = one_hot(idx, M, prompts.dtype) @ prompts.reshape(M, L * W)  # (B, N, Lp·W)
    return picked.reshape(B, N * L, W)


def one_hot(idx: "torch.Tensor", size: int, dtype) -> "torch.Tensor":
    """(…, size) one-hot rows of integer ids (…,): picking rows by a matrix product keeps the backward pass deterministic
    (indexing's backward accumulates repeated ids in an order the CPU kernels do not fix)."""
    return torch.nn.functional.one_hot(idx, size).to(dtype)


def pull_constraint(query: "torch.Tensor", keys: "torch.Tensor", idx: "torch.Tensor") -> "torch.Tensor":
    """L2P's surrogate ``reduce_sim``: Σ_b Σ_{m ∈ idx_b} cos(q_b, k_m) / B (a sum over the N picks, a mean over the batch).

    The loss subtracts ``pull_constraint_coeff`` times this; gradients reach the keys only
    (the query comes from the frozen model).
    """
    q = torch.nn.functional.normalize(query.float(), dim=-1)
    k = one_hot(idx, keys.shape[0], torch.float32) @ torch.nn.functional.normalize(keys.float(), dim=-1)  # (B, N, D)
    return (k * q.unsqueeze(1)).sum() / query.shape[0]


# --- CODA-Prompt ------------------------------------------------------------------------------
def coda_weights(query: "torch.Tensor", keys: "torch.Tensor", attention: "torch.Tensor") -> "torch.Tensor":
    """α (B, M): α_bm = cos(q_b ⊙ A_m, K_m) for a query (B, D), keys K (M, D) and attention vectors A (M, D)."""
    attended = torch.nn.functional.normalize(query.float().unsqueeze(1) * attention.unsqueeze(0), dim=-1)  # (B, M, D)
    return (attended * torch.nn.functional.normalize(keys, dim=-1).unsqueeze(0)).sum(-1)


def compose(alpha: "torch.Tensor", components: "torch.Tensor") -> "torch.Tensor":
    """The prompt of each image: Σ_m α_bm P_m, (B, Lp, W) from α (B, M) and components (M, Lp, W)."""
    return torch.einsum("bm,mlw->blw", alpha, components)


def ortho_penalty(t: "torch.Tensor") -> "torch.Tensor":
    """mean over entries of (T Tᵀ − I)², T the rows of ``t`` flattened to (M, ·) (CODA-Prompt's ``ortho_penalty``)."""
    t = t.reshape(t.shape[0], -1)
    return ((t @ t.t() - torch.eye(t.shape[0], device=t.device, dtype=t.dtype)) ** 2).mean()


def gram_schmidt(previous: "torch.Tensor", count: int, generator: "torch.Generator") -> "torch.Tensor":
    """``count`` new unit rows (count, d), float32 on the CPU: Gram–Schmidt on standard normal draws.

    Each new row is orthogonal to the span of ``previous`` (n, d) (earlier components, any
    device, possibly trained and no longer orthogonal) and to the rows drawn before it, as in
    CODA-Prompt's ``gram_schmidt`` (which projects off each earlier row in turn: the same when
    the earlier rows are orthonormal). Once the rows fill the space (more components than
    dimensions, e.g. on a tiny model), a new orthonormal family starts. Draws come from
    ``generator`` (a CPU generator), so the result does not depend on the device.
    """
    d = previous.shape[1]
    basis = torch.zeros(0, d, dtype=torch.float64)
    if previous.shape[0]:
        prev = previous.detach().to("cpu", torch.float64)
        _, s, vh = torch.linalg.svd(prev, full_matrices=False)
        basis = vh[s > s.max() * 1e-10] if s.max() > 0 else basis  # an orthonormal basis of the earlier rows' span
    rows = []
    for _ in range(count):
        if basis.shape[0] >= d:
            basis = torch.zeros(0, d, dtype=torch.float64)
        v = torch.randn(d, generator=generator, dtype=torch.float64)
        for _ in range(2):  # twice is enough (Kahan's "twice is enough" re-orthogonalisation)
            v = v - basis.t() @ (basis @ v)
        v = v / v.norm()
        basis = torch.cat([basis, v.unsqueeze(0)])
        rows.append(v)
    return torch.stack(rows).float() if rows else torch.zeros(0, d)

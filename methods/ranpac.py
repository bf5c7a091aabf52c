"""ranpac: frozen CLIP image features, a fixed random ReLU projection and a ridge-regression classifier (RanPAC).

Reference: McDonnell et al., "RanPAC: Random Projections and Pre-trained Models
for Continual Learning", NeurIPS 2023; code RanPAC/RanPAC, RanPAC.py
(``setup_RP``: W_rand = randn(D, M), M = 10000 in every args/*_publish.csv
row that uses it; ``replace_fc``: H = relu(F @ W_rand), Q += Hᵀ Y (one-hot over
all classes), G += Hᵀ H, Wo = solve(G + λI, Q); ``optimise_ridge_parameter``:
λ from the grid 10^-8 … 10^8 (17 values) minimising the mean squared error on
the last 20 % of the current task's (shuffled) samples of a ridge fit on the
first 80 %, the current task alone) and inc_net.py (``CosineLinear.forward``
with ``use_RP``: logits = relu(x @ W_rand) @ Woᵀ).

Here, after each experience (the model is never trained, ``trains = False``):

    h(x) = relu(f(x) W),  W ∈ R^{D×M} fixed, entries N(0, 1), M = ``projection_dim``
    G ← G + Σ h hᵀ,  Q ← Q + Σ h yᵀ  (y one-hot over the dataset's classes)
    Wo = (G + λI)⁻¹ Q,  λ = ``ridge``, or (None, default) chosen as the reference does
    score_c(x) = h(x) · Wo[:, c] over the label space

``projection_dim: 0`` skips the projection (h = f, the reference's M = 0 rows).
G and Q are sums, so Wo is the same whatever the experience order (up to float
error) for a fixed λ; with cross-validation λ depends on the last experience's
data, as in the reference. Classes not yet learned have no classifier column
worth the name: ``scores_unseen_classes = False`` (the reference scores seen
classes only).

Deliberate differences: the reference's first-session PETL adaptation (adapter /
SSF / VPT fine-tuning on task 1, RanPAC's phase 1) is skipped: the CLIP image
tower stays as it is. Features are the Learner's L2-normalised CLIP image
features (the reference uses raw ViT embeddings). W is drawn from a generator
seeded with the cell's seed, so the global random stream is untouched and a
resumed cell redraws the same W. The cross-validation split is a seeded random
80/20 split (the reference's comes from a shuffled loader), and its 17 ridge
fits are computed from one eigendecomposition in float64 (of the smaller of
the M×M and n×n Gram matrices) instead of 17 float32 solves: the same ridge
solutions, exactly in exact arithmetic. The final solve is float32 as in the reference.

Memory: W (``random_projection``), G and Q (``ridge_statistics``, M² + M·C
floats: 400 MB at M = 10000) and Wo (``classifier``). Checkpoints hold G, Q, the feature
width and the λ history; W is redrawn from the seed.
"""
from __future__ import annotations

import lazy_loader as lazy
from pydantic import Field

from clbench import Method, Params, hookimpl, no_grad
from clbench.memory import nbytes

torch = lazy.load("torch")


#: the reference's ridge grid (``optimise_ridge_parameter``: 10.0 ** np.arange(-8, 9))
RIDGE_GRID = tuple(10.0 ** k for k in range(-8, 9))
#: the reference's share of the current task's samples used to fit each candidate ridge
FIT_FRACTION = 0.8
FORMULA = ("score = relu(f W) Wo, Wo = (G + lambda I)^-1 Q, G = sum h h^T, Q = sum h y^T over all experiences; "
           "lambda by 80/20 validation MSE over 10^-8..10^8 on the current experience (McDonnell et al. 2023)")


class RanPACParams(Params):
    projection_dim: int = Field(10000, ge=0)  # M, the random projection's width (reference 10000); 0: no projection
    ridge: float | None = Field(None, gt=0)  # λ; None: chosen per experience by the reference's cross-validation


def random_projection(dim: int, width: int, seed: int, device) -> torch.Tensor | None:
    """W (dim, width) with N(0, 1) entries from a generator seeded with ``seed``; None when ``width`` is 0."""
    if width == 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, width, generator=generator).to(device)


def project(features: torch.Tensor, W: torch.Tensor | None) -> torch.Tensor:
    """h = relu(f W) (N, M), float32; f itself without a projection."""
    features = features.float()
    return features if W is None else torch.nn.functional.relu(features @ W)


def accumulate(G: torch.Tensor, Q: torch.Tensor, H: torch.Tensor, Y: torch.Tensor) -> None:
    """In place: G += Hᵀ H, Q += Hᵀ Y."""
    G.add_(H.t() @ H)
    Q.add_(H.t() @ Y)


def ridge_solve(G: torch.Tensor, Q: torch.Tensor, ridge: float) -> torch.Tensor:
    """Wo = (G + λI)⁻¹ Q (M, C), as the reference: ``torch.linalg.solve`` in G's dtype."""
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return torch.linalg.solve(G + ridge * eye, Q)


def choose_ridge(H: torch.Tensor, Y: torch.Tensor, generator: torch.Generator, grid=RIDGE_GRID) -> tuple[float, list[float]]:
    """The reference's λ: fit Wo on a random 80 % of (H, Y), pick the grid value with the least validation MSE.

    Returns (λ, validation MSE per grid value). Every fit is computed from one float64
    eigendecomposition (primal M×M or dual n×n Gram, whichever is smaller); ties go to the smaller λ.
    """
    n = H.shape[0]
    n_fit = int(n * FIT_FRACTION)
    if n_fit < 1 or n_fit == n:
        raise ValueError(f"ranpac: {n} training samples are too few to choose the ridge by validation; set `ridge`")
    order = torch.randperm(n, generator=generator).to(H.device)
    H, Y = H[order].double(), Y[order].double()
    Hf, Yf, Hv, Yv = H[:n_fit], Y[:n_fit], H[n_fit:], Y[n_fit:]
    if n_fit < H.shape[1]:  # dual: Wo = Hfᵀ (Hf Hfᵀ + λI)⁻¹ Yf
        s, U = torch.linalg.eigh(Hf @ Hf.t())
        left, right = (Hv @ Hf.t()) @ U, U.t() @ Yf
    else:  # primal: Wo = (Hfᵀ Hf + λI)⁻¹ Hfᵀ Yf
        s, U = torch.linalg.eigh(Hf.t() @ Hf)
        left, right = Hv @ U, U.t() @ (Hf.t() @ Yf)
    s = s.clamp(min=0)
    losses = [float(((left / (s + lam)) @ right - Yv).pow(2).mean()) for lam in grid]
    best = min(range(len(grid)), key=lambda i: (losses[i], i))
    return grid[best], losses


class RanPAC(Method):
    name = "ranpac"
    Params = RanPACParams
    trains = False
    scores_unseen_classes = False

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.W = None  # drawn once the feature width is known
        self.G = self.Q = self.Wo = None
        self.ridges: list[float] = []

    def train(self, exp) -> None:
        pass

    def _setup(self, dim: int) -> None:
        device, M = self.learner.device, self.params.projection_dim
        self.W = random_projection(dim, M, self.learner.seed, device)
        width = M or dim
        self.G = torch.zeros(width, width, device=device)
        self.Q = torch.zeros(width, self.learner.dataset.num_classes, device=device)

    @no_grad
    def after_experience(self, exp) -> None:
        learner = self.learner
        feats = learner.features(exp.train)
        if self.G is None:
            self._setup(feats.shape[1])
        H = project(feats, self.W)
        Y = torch.nn.functional.one_hot(exp.train.labels.to(H.device).long(), self.Q.shape[1]).float()
        accumulate(self.G, self.Q, H, Y)
        if self.params.ridge is not None:
            ridge = self.params.ridge
        else:
            generator = torch.Generator().manual_seed(learner.seed * 1000 + exp.index)
            present = Y.sum(0) > 0  # the current experience's classes (other columns add 0 to every λ's error)
            ridge, _ = choose_ridge(H, Y[:, present], generator)
        self.ridges.append(ridge)
        self.Wo = ridge_solve(self.G, self.Q, ridge)

    @no_grad
    def predict_features(self, features, classes):
        """(B, len(classes)) from L2-normalised image features (B, D): relu(f W) · Wo[:, c]; −inf for a class
        with no training image yet (its column of Q is zero), which a label space over every class can hold (X-TAIL)."""
        if self.Wo is None:
            raise RuntimeError("ranpac has no classifier before its first experience")
        H = project(features, self.W)
        index = torch.tensor(classes, device=self.Wo.device)
        learned = self.Q[:, index].abs().sum(0) > 0
        return (H @ self.Wo[:, index]).masked_fill(~learned, float("-inf"))

    def memory_summary(self):
        return {"random_projection": nbytes(self.W) if self.W is not None else 0,
                "ridge_statistics": nbytes([self.G, self.Q]) if self.G is not None else 0,
                "classifier": nbytes(self.Wo) if self.Wo is not None else 0}

    def state_dict(self):
        dim = None if self.G is None else (self.W.shape[0] if self.W is not None else self.G.shape[0])
        return {"G": self.G, "Q": self.Q, "ridges": list(self.ridges), "dim": dim}

    def load_state_dict(self, state):
        self.ridges = [float(r) for r in state["ridges"]]
        if state["G"] is None:
            return
        device = self.learner.device
        self.G, self.Q = state["G"].to(device), state["Q"].to(device)
        if self.params.projection_dim:
            self.W = random_projection(int(state["dim"]), self.params.projection_dim, self.learner.seed, device)
        self.Wo = ridge_solve(self.G, self.Q, self.ridges[-1])

    def record_extras(self):
        return {"formula": FORMULA, "projection_dim": self.params.projection_dim,
                "ridge": self.params.ridge if self.params.ridge is not None else "cross-validated per experience",
                "ridges": self.ridges, "first_session_adaptation": "skipped (frozen CLIP image tower)"}


@hookimpl
def clbench_add_methods(register):
    register(RanPAC)

"""moe_adapters: mixture-of-experts adapters in CLIP's image tower, one router per experience, and DDAS (MoE-Adapters).

Reference: Yu et al., "Boosting Continual Learning of Vision-Language Models via
Mixture-of-Experts Adapters", CVPR 2024; code JiazuoYu/MoE-Adapters4CL, its
multi-domain setting ``mtil/`` (the full method: per-task routers, the
activate-freeze strategy and DDAS). File names below are under ``mtil/``.

The backbone (both towers) is frozen. In every adapted block of the image
tower, with x_a (B, N, W) the residual stream after attention and c = x_a[:, 0]
its class token (one routing decision per image, for all its tokens):

    block output = x_a + MLP(LN_2(x_a)) + Σ_e g_e · E_e(x_a)
    E_e(x) = s · up_e(dropout(relu(down_e(x))))            W → r → W, s = ``adapter_scale``
    h = c·R_t (+ ε ⊙ (softplus(c·N_t) + 1e-2), ε ~ N(0, 1), while training)
    g = softmax over the k largest entries of h, 0 elsewhere  (k = ``top_k``)

R_t, N_t (W × E, zero-initialised) are experience t's router and noise
weights; the experts are shared by all experiences. Training loss on a batch:
cross-entropy with label smoothing over the current experience's classes,
scores logit_scale · cos(f(x), t_c), t_c the frozen text tower's prompt
features (template ``template``); optionally + ``balance_weight`` ·
Σ_blocks [cv²(Σ_x g(x)) + cv²(load)], cv²(v) = var(v) / (mean(v)² + 1e-10),
load_e = Σ_x P(expert e stays in the top k under new noise) (Shazeer et al.
2017), or the count of images routed to e without noise.

Activate-freeze: while experience t trains, each block counts how many images
each expert served; afterwards the ``freeze_top`` most used experts of each
block are frozen for every later experience (the union grows).

DDAS (Distribution Discriminative Auto-Selector): after experience t an
autoencoder AE_t (Linear D → ``ae_code``, ReLU, Linear → D, sigmoid) is trained
with MSE on z = sigmoid(√D · f0(x)) of the experience's training images, f0
the frozen CLIP image feature (L2-normalised, D = its size). Its threshold τ_t
is the ``threshold_quantile`` quantile of AE_t's errors on those images (or the
absolute ``threshold``). At test time, per image:

    d_t(x) = mean_j (AE_t(z)_j − z_j)²,    t* = argmin_t d_t(x)
    d_t*(x) ≤ τ_t*  →  the adapted model with router t* (``routers: shared``: the one router)
    otherwise       →  zero-shot CLIP (no adapters)

scored against the label space with CLIP's text classifier (prompt ensemble).

Defaults follow the reference (each with its source):

- ``experts`` 22: scripts/train/train_full_shot_router11_experts22_1000iters.sh
  (``num=22``, ``--experts_num ${num}``); ``top_k`` 2: src/args.py ``--topk``.
- ``bottleneck`` 64: src/args.py ``--ffn_num`` (clip/adapter.py builds
  ``down_proj`` with 64 outputs); ``adapter_scale`` 0.1, ``dropout`` 0.1, ReLU,
  "lora" initialisation (down: PyTorch's Linear weight init, kaiming-uniform
  a = √5; up and both biases zero, so every block starts as CLIP's):
  clip/model.py ``ResidualAttentionBlock.__init__`` (``Adapter(d_model,
  dropout=0.1, bottleneck=self.ffn_num, init_option='lora', adapter_scalar=0.1,
  adapter_layernorm_option='none')``) and clip/adapter.py.
- every block of the image tower (``blocks: all``): ``VisualTransformer`` builds
  all its blocks with ``adapter_flag=True``; finetune.py loops over 12 blocks.
- placement and routing: clip/model.py ``forward``: ``x = x + attention(ln_1(x))``,
  router input ``x.permute(1, 0, 2)[:, 0, :]`` (the class token), the whole
  token sequence of an image dispatched to its experts, ``x = x +
  self.mlp(self.ln_2(x)) + y``. ``noisy_top_k_gating``: noise_epsilon 1e-2,
  softplus, top-k then softmax over the k logits; ``noisy_gating = True`` with
  ``--is_train`` (train scripts pass it, test scripts do not: no noise at test).
- one zero-initialised router (and noise matrix) per task: ``router_list`` /
  ``w_noise_list`` of ``nn.Parameter(torch.zeros(d_model, experts_num))``,
  indexed by ``--task_id`` (``routers: per_experience``).
- loss: src/models/finetune.py ``F.cross_entropy(logits_per_image, labels,
  label_smoothing=args.ls)`` over the current dataset's class prompts only
  (``label_space: experience``; cil/continual_clip/models.py does the same with
  the current task's class names). ``label_smoothing`` 0.0 is the reference's
  class-incremental setting (cil/configs/class/cifar100_10-10-MoE-Adapters.yaml
  ``ls: 0.0``), the scenario of clbench's streams; its multi-domain scripts pass
  ``--ls 0.2``. With CLIP's logit scale (100) a smoothed target is far from the
  model's confident scores and the term dominates: on the demo's world-ci5
  stream, 100 steps at lr 1e-3 with 0.2 took experience 0's accuracy from 0.925
  (zero-shot) to 0.76, with 0.0 it stayed at 0.925.
- ``balance_weight`` 0: clip/model.py computes ``loss = cv_squared(importance) +
  cv_squared(load); loss *= 1e-2`` in ``forward`` but never returns it, and
  finetune.py trains on the cross-entropy alone; 0.01 reproduces the
  coefficient written there.
- ``freeze_top`` 2: finetune.py, after training, ``torch.topk(choose_map_image,
  2)`` per block is appended to the frozen list, whose experts' down/up weights
  and biases get ``requires_grad = False`` in later tasks (``--frozen``).
- DDAS: src/models/AutoEncoder.py ``Autoencoder`` (Linear → 100, ReLU, Linear,
  Sigmoid; ``ae_code`` 100), ``encoder_criterion`` (MSE), Adam(weight_decay=1e-4)
  with the learning rate reset every step by ``exp_lr_scheduler(..., 0.01)`` to
  0.01 · 0.1^(epoch // 10) (``ae_lr`` 0.01, ``ae_weight_decay`` 1e-4), batch 64
  (src/args.py ``--batch-size``; ``ae_batch_size``), ``--iterations 300`` per task
  in the train script (``ae_steps``); selection in src/models/evaluation.py
  ``zeroshot_eval``: argmin of the autoencoders' errors, zero-shot when the
  best error is above ``--threshold`` (``val_task_id == -1`` skips the experts).

The reference's class-incremental code (``cil/``: CIFAR-100) is a reduced
configuration of the same model: cil/clip/model.py ``experts_num = 2``,
``top_k = 2``, one router, no freezing, no DDAS, and
cil/configs/class/cifar100_10-10-MoE-Adapters.yaml ``ls: 0.0``; here
``{experts: 2, top_k: 2, routers: shared, freeze_top: 0, ddas: false}``; the
multi-domain setting's smoothing is ``label_smoothing: 0.2``. The optimiser is
the cell's; the reference's is AdamW with lr 1e-3 (most MTIL tasks; the CIL
config), weight decay 0, cosine with warmup (100 iterations MTIL, 30 CIL):
give this method ``train: {lr: 1.0e-3, weight_decay: 0.0}`` in a suite.

Deliberate differences:

- image tower only: the reference also puts experts and routers in the text
  tower (``--ffn_adapt_where AdapterDoubleEncoder``); here the text tower is
  frozen and its prompt features are fixed.
- DDAS's autoencoders read frozen CLIP image features, not the reference's
  ImageNet AlexNet conv5 maps (256 × 13 × 13, through a sigmoid), of the
  training images without the reference's training augmentation; the features
  are scaled by √D before the sigmoid so each coordinate has about unit scale,
  as conv activations do. The reference's threshold (0.0655 in every script)
  belongs to AlexNet features, so the threshold is calibrated per autoencoder
  on its own training images (``threshold_quantile``, default 0.99: on the
  demo's streams it sends at most 4 % of a learned experience's test images,
  and after the first domain 3 / 44 / 73 % of the unseen noisy / inverted /
  sketch domains' images, to zero-shot CLIP; 0.95: 7 % and 9 / 78 / 98 %); the
  reference's extra autoencoder trained on TinyImageNet (a stand-in for the
  pre-training data whose win also means zero-shot) is not built: only the
  threshold sends images to zero-shot CLIP.
- DDAS decides per image; the reference decides per test batch (its MSE
  averages over the batch, which holds one dataset's images).
- activate-freeze freezes only experts used at least once (ties: lower index
  first); ``torch.topk`` in the reference can pick an unused expert on ties.
- the schedule is the cell's (epochs, lr, schedule), not 1000 iterations per
  task; the autoencoder runs ``ae_steps`` steps (the reference's loop runs one
  more). ``ddas: false`` with per-experience routers predicts with the latest
  router (the reference without ``--autorouter`` uses the router of
  ``--task_id``). The balancing term, when on, sums over the adapted blocks.

Memory: the experts, routers and noise matrices (``adapters``) and the
autoencoders (``autoencoders``). Random draws (gating noise, dropout) use
torch's global generator, which a resumed cell restores. With ``train.devices > 1``
every rank draws the whole batch's gating noise and keeps its own rows, and usage
counts and balancing terms are over the whole batch (``Batch.gather``); expert
dropout masks are drawn per rank, so records match one process in distribution,
not bit for bit (docs/distributed.md).
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Union

import lazy_loader as lazy
from pydantic import Field, field_validator

from clbench import Method, Params, allow_host_sync, hookimpl, no_grad, sum_over_ranks, to_device
from clbench.facts import blocks_problem, image_tower_problem, template_problem
from clbench.losses import positions
from clbench.memory import nbytes

torch = lazy.load("torch")

FORMULA = ("block out = x_a + MLP(LN_2(x_a)) + sum_e g_e E_e(x_a); g = softmax over top-k of x_a[:,0] R_t "
           "(+ N(0,1) * (softplus(x_a[:,0] N_t) + 1e-2) while training); E_e(x) = s * up(dropout(relu(down(x)))); "
           "loss = CE(label smoothing) over the experience's classes [+ w * sum_blocks cv2(importance) + cv2(load)]; "
           "DDAS: t* = argmin_t mean (AE_t(z) - z)^2, z = sigmoid(sqrt(D) f0(x)); zero-shot CLIP if d_t* > tau_t* "
           "(Yu et al. 2024, JiazuoYu/MoE-Adapters4CL mtil/)")
NOISE_EPSILON = 1e-2  # clip/model.py noisy_top_k_gating(noise_epsilon=1e-2)
CV_EPSILON = 1e-10  # clip/model.py cv_squared


class MoEAdaptersParams(Params):
    experts: int = Field(22, ge=1)  # experts per adapted block (train script: num=22)
    top_k: int = Field(2, ge=1)  # experts mixed per image (args.py --topk 2)
    bottleneck: int = Field(64, ge=1)  # each expert's inner width (args.py --ffn_num 64)
    adapter_scale: float = Field(0.1, gt=0)  # s, the experts' output scale (adapter_scalar=0.1)
    dropout: float = Field(0.1, ge=0, lt=1)  # on the experts' hidden units while training (Adapter dropout=0.1)
    blocks: Union[Literal["all"], list[int]] = "all"  # adapted blocks from 0 (a suite's list is a grid axis: [[10, 11]] is one cell)
    noisy_gating: bool = True  # gating noise while training (noisy_gating=True with --is_train)
    routers: Literal["per_experience", "shared"] = "per_experience"  # one router per experience (mtil), or one (cil)
    freeze_top: int = Field(2, ge=0)  # experts per block frozen after each experience, the most used (finetune.py topk 2)
    balance_weight: float = Field(0.0, ge=0)  # load-balancing term; the reference computes 0.01 * it but never trains on it
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # cil config ls: 0.0 (the mtil scripts: --ls 0.2)
    label_space: Literal["experience", "seen"] = "experience"  # cross-entropy over the experience's classes (reference) or all seen
    template: int = Field(0, ge=0)  # the prompt template of the training prompts (prediction: the templates' ensemble)
    ddas: bool = True  # route each test image by the autoencoders (DDAS); false: every image through the latest router
    ae_code: int = Field(100, ge=1)  # autoencoder code width (Autoencoder code_dims=100)
    ae_steps: int = Field(300, ge=1)  # autoencoder training steps per experience (--iterations 300)
    ae_batch_size: int = Field(64, ge=1)  # (args.py --batch-size 64)
    ae_lr: float = Field(0.01, gt=0)  # decayed x0.1 every 10 epochs (exp_lr_scheduler(..., 0.01))
    ae_weight_decay: float = Field(1e-4, ge=0)  # Adam's (AutoEncoder.py)
    threshold: Optional[float] = Field(None, gt=0)  # absolute reconstruction-error threshold; None: calibrated per autoencoder
    threshold_quantile: float = Field(0.99, gt=0, le=1)  # τ_t = this quantile of AE_t's errors on its training images

    @field_validator("blocks", mode="before")
    @classmethod
    def _one_block(cls, blocks):
        if isinstance(blocks, int) and not isinstance(blocks, bool):  # a suite's plain list became grid points
            raise ValueError(f"{blocks} is one block; write blocks: [[{blocks}, ...]] in a suite (a plain list is a grid "
                             f"axis), or 'all'")
        return blocks

    @field_validator("blocks")
    @classmethod
    def _distinct_blocks(cls, blocks):
        if isinstance(blocks, list):
            if not blocks:
                raise ValueError("an empty list adapts no block; give block indices or 'all'")
            if any(b < 0 for b in blocks):
                raise ValueError(f"block {min(blocks)} is negative; blocks count from 0")
            dup = next((b for b in blocks if blocks.count(b) > 1), None)
            if dup is not None:
                raise ValueError(f"block {dup} is listed twice; each block once")
            return sorted(blocks)
        return blocks


# --- the maths, as plain functions on tensors (tested by hand) -----------------------------------------
def cv_squared(values: "torch.Tensor") -> "torch.Tensor":
    """Squared coefficient of variation var(v) / (mean(v)² + 1e-10) (unbiased variance); 0 for a single value."""
    v = values.float()
    if v.numel() <= 1:
        return v.new_zeros(())
    return v.var() / (v.mean() ** 2 + CV_EPSILON)


def normal_cdf(z: "torch.Tensor") -> "torch.Tensor":
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def noisy_top_k_gating(x, w_gate, w_noise, k: int, noise=None, epsilon: float = NOISE_EPSILON, per_row: bool = False):
    """Gates (B, E) and per-expert load (E,) from router inputs x (B, W); ``per_row``: the load's terms (B, E), unsummed.

    h = x·w_gate, plus ``noise`` ⊙ (softplus(x·w_noise) + epsilon) when ``noise`` (B, E) is given
    (training); the k largest entries of h get softmax weights, the others 0. The load is Σ_x P(e stays
    in the top k if the noise were redrawn) with noise and k < E, else the count of images with g_e > 0.
    """
    clean = x @ w_gate
    n_experts = clean.shape[1]
    k = min(k, n_experts)
    if noise is not None:
        std = torch.nn.functional.softplus(x @ w_noise) + epsilon
        logits = clean + noise.to(clean.dtype) * std
    else:
        logits = clean
    top_values, top_index = logits.topk(min(k + 1, n_experts), dim=1)
    weights = torch.softmax(top_values[:, :k], dim=1)
    gates = torch.zeros(logits.shape, dtype=weights.dtype, device=logits.device).scatter(1, top_index[:, :k], weights)
    if noise is not None and k < n_experts:
        load = prob_in_top_k(clean, logits, std, top_values, k)
    else:
        load = (gates > 0).float()
    return gates, (load if per_row else load.sum(0))


def prob_in_top_k(clean, noisy, std, top_values, k: int):
    """P(each expert's logit is among the k largest under fresh noise), per image (B, E) (Shazeer et al. 2017).

    An expert now in the top k must beat the (k+1)-th largest noisy logit; one outside must beat the k-th.
    """
    threshold_in = top_values[:, k:k + 1]
    threshold_out = top_values[:, k - 1:k]
    is_in = noisy > threshold_in
    return torch.where(is_in, normal_cdf((clean - threshold_in) / std), normal_cdf((clean - threshold_out) / std))


def make_expert(width: int, bottleneck: int):
    """One adapter expert: ``down`` (W → r, PyTorch's default weight init, zero bias), ``up`` (r → W, zeros)."""
    expert = torch.nn.ModuleDict({"down": torch.nn.Linear(width, bottleneck), "up": torch.nn.Linear(bottleneck, width)})
    with torch.no_grad():
        expert["down"].bias.zero_()
        expert["up"].weight.zero_()
        expert["up"].bias.zero_()
    return expert


def expert_forward(expert, x, scale: float, dropout: float = 0.0, training: bool = False):
    """s · up(dropout(relu(down(x)))) on tokens x (..., W)."""
    hidden = torch.nn.functional.relu(expert["down"](x))
    hidden = torch.nn.functional.dropout(hidden, p=dropout, training=training and dropout > 0)
    return scale * expert["up"](hidden)


def mix(experts, gates, x, scale: float, dropout: float = 0.0, training: bool = False):
    """Σ_e g_e · E_e(x) for images x (B, N, W) and gates (B, E): each expert runs only on the images it was given.

    Running an expert on its own images needs their number on the host: the per-expert counts (E,) are
    read once per call, the one host sync of this sparse dispatch (a dense one, every expert on every
    image, would need none but costs E/top_k times the expert compute and draws other dropout masks).
    """
    chosen = gates > 0
    with allow_host_sync("moe dispatch: each expert's image count sizes its batch"):
        counts = chosen.sum(0).tolist()
    rows = torch.nonzero_static(chosen.t(), size=sum(counts))[:, 1]  # images of expert 0, then of expert 1, ...
    out = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    for e, index in enumerate(rows.split(counts)):
        if len(index):
            y = expert_forward(experts[e], x[index], scale, dropout, training) * gates[index, e][:, None, None]
            out.index_add_(0, index, y.to(out.dtype))  # in place: a sum over experts, each image at most once per expert
    return out


def most_used(counts: list[int], n: int) -> list[int]:
    """The ``n`` experts with the highest counts among those used at least once (ties: lower index first)."""
    order = sorted(range(len(counts)), key=lambda e: (-counts[e], e))
    return [e for e in order[:n] if counts[e] > 0]


def ddas_input(features: "torch.Tensor") -> "torch.Tensor":
    """z = sigmoid(√D · f) of L2-normalised features (B, D): coordinates of about unit scale into (0, 1)."""
    return torch.sigmoid(features.float() * math.sqrt(features.shape[1]))


def make_autoencoder(dim: int, code: int):
    """The reference's autoencoder: Linear(D, code), ReLU, Linear(code, D), sigmoid."""
    return torch.nn.Sequential(torch.nn.Linear(dim, code), torch.nn.ReLU(), torch.nn.Linear(code, dim), torch.nn.Sigmoid())


def reconstruction_error(autoencoder, z: "torch.Tensor") -> "torch.Tensor":
    """Per-image mean squared reconstruction error (B,) of DDAS inputs z (B, D)."""
    return ((autoencoder(z) - z) ** 2).mean(1)


def ddas_route(errors: "torch.Tensor", thresholds: "torch.Tensor") -> "torch.Tensor":
    """(B,) the experience whose autoencoder reconstructs each image best, or −1 (zero-shot) when that error is above
    its threshold; ``errors`` (B, T), ``thresholds`` (T,)."""
    best = errors.argmin(1)
    ok = errors.gather(1, best[:, None]).squeeze(1) <= thresholds[best]
    return torch.where(ok, best, torch.full_like(best, -1))


def train_autoencoder(z, code: int, steps: int, batch_size: int, lr: float, weight_decay: float, generator):
    """An autoencoder fitted to z (N, D) by MSE: Adam, shuffled batches, lr × 0.1 every 10 epochs (the reference's)."""
    autoencoder = make_autoencoder(z.shape[1], code).to(z.device)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(z) / batch_size)
    with torch.enable_grad():
        for step in range(steps):
            epoch, i = divmod(step, per_epoch)
            if i == 0:
                order = torch.randperm(len(z), generator=generator).to(z.device)
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1 ** (epoch // 10)
            batch = z[order[i * batch_size:(i + 1) * batch_size]]
            loss = torch.nn.functional.mse_loss(autoencoder(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return autoencoder.eval()


class ExpertBank:
    """The experts, routers and noise matrices of every adapted block (torch modules in ``net``), as block adapters.

    ``adapters()`` gives ``{block: f}`` for ``Learner.encode_images``: f(x_a) = Σ_e g_e · E_e(x_a), routed
    by router ``active``. While ``training``: gating noise (``noisy``), expert dropout, per-block usage
    counts (images per expert, ``usage``) and, with ``balance``, each block's balancing term in ``terms``.
    """

    def __init__(self, blocks: list[int], width: int, experts: int, bottleneck: int, routers: int, top_k: int,
                 scale: float, dropout: float, noisy: bool, device):
        self.blocks, self.top_k, self.scale, self.dropout, self.noisy = blocks, top_k, scale, dropout, noisy
        self.net = torch.nn.ModuleDict({str(b): torch.nn.ModuleDict({
            "experts": torch.nn.ModuleList([make_expert(width, bottleneck) for _ in range(experts)]),
            "router": torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(width, experts)) for _ in range(routers)]),
            "noise": torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(width, experts)) for _ in range(routers)]),
        }) for b in blocks}).to(device)
        self.active = 0
        self.training = False
        self.balance = False
        self.terms: list = []
        self.batch = None  # the training step's Batch while its loss runs: draws and statistics over the whole batch
        self.usage = torch.zeros(len(blocks), experts, dtype=torch.long, device=device)

    def adapters(self) -> dict:
        return {b: (lambda x, i=i, b=b: self.forward(i, b, x)) for i, b in enumerate(self.blocks)}

    def forward(self, i: int, block: int, x):
        layer = self.net[str(block)]
        c = x[:, 0]
        batch = self.batch if self.training else None
        noise = None
        if self.training and self.noisy:
            # the whole batch's draws, cut to this rank's rows with train.devices > 1 (Batch.local; as is in one process)
            rows = len(batch.labels) if batch is not None else c.shape[0]
            noise = torch.randn(rows, len(layer["experts"]), device=c.device)
            noise = batch.local(noise) if batch is not None else noise
        gates, load = noisy_top_k_gating(c, layer["router"][self.active], layer["noise"][self.active], self.top_k, noise,
                                          per_row=True)
        if self.training:
            if batch is not None:  # usage and balancing over the whole batch's rows (Batch.gather)
                gates_all, load_all = batch.gather(gates), batch.gather(load)
            else:
                gates_all, load_all = gates, load
            self.usage[i] += (gates_all > 0).sum(0)
            if self.balance:
                self.terms.append(cv_squared(gates_all.sum(0)) + cv_squared(load_all.sum(0)))
        return mix(layer["experts"], gates, x, self.scale, self.dropout, self.training)

    def trainable(self, router: int, frozen: dict[int, set[int]]) -> list:
        """Router ``router`` (and its noise matrix) and every expert not frozen; frozen experts stop requiring gradients."""
        params = []
        for b in self.blocks:
            layer = self.net[str(b)]
            params.append(layer["router"][router])
            if self.noisy:
                params.append(layer["noise"][router])
            for e, expert in enumerate(layer["experts"]):
                expert.requires_grad_(e not in frozen[b])
                if e not in frozen[b]:
                    params.extend(expert.parameters())
        return params


class MoEAdapters(Method):
    name = "moe_adapters"
    Params = MoEAdaptersParams

    def __init__(self, params, learner):
        super().__init__(params, learner)
        p = params
        tower = learner.image_tower
        blocks = list(range(tower.blocks)) if p.blocks == "all" else list(p.blocks)
        if blocks[-1] >= tower.blocks:
            raise ValueError(f"blocks: block {blocks[-1]} but the image tower has {tower.blocks} blocks; use 0..{tower.blocks - 1} or 'all'")
        self.n_experiences = len(learner.stream.experiences)
        routers = self.n_experiences if p.routers == "per_experience" else 1
        self.bank = ExpertBank(blocks, tower.width, p.experts, p.bottleneck, routers, p.top_k, p.adapter_scale, p.dropout,
                               p.noisy_gating, learner.device)
        self.bank.balance = p.balance_weight > 0
        learner.freeze("image")
        learner.freeze("text")
        self.frozen: dict[int, set[int]] = {b: set() for b in blocks}
        self.usage: list[list[list[int]]] = []  # per experience: per block, images each expert served in training
        self.autoencoders: list = []
        self.thresholds: list[float] = []
        self.routing: dict[int, "torch.Tensor"] = {}  # step -> (1 + T,) test images sent to zero-shot, to experience t
        self.settled: set[int] = set()  # steps whose routing counts are summed over the ranks (train.devices > 1)
        self.step = -1

    @classmethod
    def check(cls, params, stream, train, model=None) -> dict[str, str]:
        tower = image_tower_problem(model)
        if tower:
            return {"name": f"moe_adapters {tower}"}
        past = blocks_problem(params.blocks, model) if isinstance(params.blocks, list) else None
        if past:
            return {"blocks": past}
        problems = {}
        template = template_problem(params.template, stream)
        if template:
            problems["template"] = template
        if params.top_k > params.experts:
            problems["top_k"] = f"{params.top_k} but experts is {params.experts}; use 1..{params.experts}"
        return problems

    def router_of(self, experience: int) -> int:
        return experience if self.params.routers == "per_experience" else 0

    # --- training -------------------------------------------------------------
    def train(self, exp) -> None:
        bank = self.bank
        bank.active = self.router_of(exp.index)
        bank.usage.zero_()
        params = bank.trainable(bank.active, self.frozen)
        bank.training = True
        try:
            self.learner.fit(exp, self.loss, parameters=params)
        finally:
            bank.training = False

    def loss(self, batch):
        learner, p = self.learner, self.params
        classes = batch.exp.classes if p.label_space == "experience" else learner.stream.seen(batch.exp.index)
        text = learner.class_features(classes, template=p.template)  # the frozen text tower: cached
        self.bank.terms, self.bank.batch = [], batch
        try:
            features = learner.encode_images(batch.images, adapters=self.bank.adapters())
        finally:
            self.bank.batch = None
        logits = learner.logit_scale * features @ text.t()
        target = positions(to_device(classes, batch.labels.device), batch.labels)
        loss = torch.nn.functional.cross_entropy(logits.float(), target, label_smoothing=p.label_smoothing)
        if self.bank.balance and self.bank.terms:
            loss = loss + p.balance_weight * torch.stack(self.bank.terms).sum()
        return loss

    def after_experience(self, exp) -> None:
        p = self.params
        counts = self.bank.usage.tolist()
        self.usage.append(counts)
        for b, row in zip(self.bank.blocks, counts):
            self.frozen[b] |= set(most_used(row, p.freeze_top))
        if p.ddas:
            self._fit_autoencoder(exp)
        self.step = exp.index
        self.routing[exp.index] = torch.zeros(1 + self.n_experiences, dtype=torch.long, device=self.learner.device)

    @no_grad
    def _fit_autoencoder(self, exp) -> None:
        p, learner = self.params, self.learner
        z = ddas_input(learner.features(exp.train))
        generator = torch.Generator().manual_seed(1_000_003 * learner.seed + exp.index)
        autoencoder = train_autoencoder(z, p.ae_code, p.ae_steps, p.ae_batch_size, p.ae_lr, p.ae_weight_decay, generator)
        errors = reconstruction_error(autoencoder, z)
        self.autoencoders.append(autoencoder)
        self.thresholds.append(float(p.threshold) if p.threshold is not None else float(torch.quantile(errors, p.threshold_quantile)))

    # --- prediction -----------------------------------------------------------
    @no_grad
    def route(self, features):
        """(B,) the experience each image is routed to by DDAS, −1 for zero-shot CLIP, from frozen features (B, D)."""
        z = ddas_input(features)
        errors = torch.stack([reconstruction_error(ae, z) for ae in self.autoencoders], dim=1)
        return ddas_route(errors, torch.tensor(self.thresholds, device=errors.device))

    @no_grad
    def predict(self, images, classes):
        learner = self.learner
        text = learner.class_features(classes)
        if self.params.ddas:
            frozen = learner.encode_images(images)
            route = self.route(frozen)
            scores = learner.logit_scale * frozen @ text.t()
        else:
            route = torch.full((len(images),), self.step, dtype=torch.long, device=images.device)
            scores = torch.empty(len(images), len(classes), device=images.device)
        for t in route.unique().tolist():
            if t < 0:
                continue
            index = (route == t).nonzero().squeeze(1)
            self.bank.active = self.router_of(t)
            adapted = learner.encode_images(images[index], adapters=self.bank.adapters())
            scores[index] = (learner.logit_scale * adapted @ text.t()).to(scores.dtype)
        counts = self.routing.get(self.step)
        if counts is not None:
            counts += torch.bincount(route + 1, minlength=len(counts))
        return scores

    # --- record, memory, resume -------------------------------------------------
    def memory_summary(self):
        return {"adapters": nbytes(self.bank.net), "autoencoders": nbytes(list(self.autoencoders))}

    def _settle_routing(self) -> None:
        """Sum the routing counts of the steps scored so far over the ranks (each scored its block of the test sets)."""
        for t in sorted(self.routing):
            if t not in self.settled:
                sum_over_ranks(self.routing[t])
                self.settled.add(t)

    def state_dict(self):
        self._settle_routing()  # every rank calls state_dict before each checkpoint
        return {
            "bank": dict(self.bank.net.state_dict()),
            "autoencoders": [dict(ae.state_dict()) for ae in self.autoencoders],
            "thresholds": list(self.thresholds),
            "frozen": {b: sorted(e) for b, e in self.frozen.items()},
            "usage": self.usage,
            "routing": {t: c.tolist() for t, c in self.routing.items()},
            "step": self.step,
        }

    def load_state_dict(self, state):
        device = self.learner.device
        self.bank.net.load_state_dict(state["bank"])
        self.autoencoders = []
        for saved in state["autoencoders"]:
            dim, code = saved["0.weight"].shape[1], saved["0.weight"].shape[0]
            autoencoder = make_autoencoder(dim, code).to(device)
            autoencoder.load_state_dict(saved)
            self.autoencoders.append(autoencoder.eval())
        self.thresholds = [float(t) for t in state["thresholds"]]
        self.frozen = {int(b): set(e) for b, e in state["frozen"].items()}
        self.usage = state["usage"]
        self.routing = {int(t): torch.tensor(c, dtype=torch.long, device=device) for t, c in state["routing"].items()}
        self.settled = set(self.routing)
        self.step = int(state["step"])

    def record_extras(self):
        p = self.params
        self._settle_routing()  # runs on every rank
        routing = []
        for t in sorted(self.routing):
            counts = self.routing[t].tolist()
            total = sum(counts)
            routing.append({"step": t, "zero_shot": counts[0], "experience": counts[1:t + 2],
                            "adapted_share": (total - counts[0]) / total if total else None})
        threshold = (f"absolute {p.threshold}" if p.threshold is not None
                     else f"quantile {p.threshold_quantile} of each autoencoder's training errors")
        return {
            "formula": FORMULA, "experts": p.experts, "top_k": p.top_k, "blocks": self.bank.blocks, "routers": p.routers,
            "freeze_top": p.freeze_top, "label_smoothing": p.label_smoothing, "balance_weight": p.balance_weight,
            "ddas": p.ddas, "threshold_rule": threshold if p.ddas else None, "thresholds": self.thresholds,
            "expert_usage": self.usage,
            "frozen_experts": {str(b): sorted(e) for b, e in self.frozen.items()},
            "ddas_routing": routing,
        }


@hookimpl
def clbench_add_methods(register):
    register(MoEAdapters)

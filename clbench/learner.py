"""The Learner: everything a method shares, so methods stay small and comparable.

It owns the device, mixed precision, the image preprocessing, the forward
passes (with text features cached while the text tower does not change), the
training loop, evaluation into accuracy-matrix rows, and the cost meters.
Methods call it; they never write their own loop unless they must.

What a method may use is exactly ``METHOD_API`` (documented in
docs/writing_methods.md, section 4); everything else here is the harness's own
and may change. A test reads the built-in methods' source and holds them to it.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .contrast_stats import ContrastStats
from .cost import CostMeter
from .batch import Batch
from .data.base import ImageSet
from .errors import UserError
from .data.scenarios import Experience, Stream
from .distributed import StepRows, all_reduce_sum, gather_rows, gather_set, local_device, shard_bounds, world
from .models import ClipModel
from .shared_results import SharedResults, weights_fingerprint
from .sync_check import allow_host_sync, step_check

LossFn = Callable[[Batch], torch.Tensor]
PredictFn = Callable[[torch.Tensor, list[int]], torch.Tensor]

#: the Learner's surface for methods (attributes and methods); the snapshot's is ``FrozenModel.METHOD_API``
METHOD_API = ("device", "seed", "stream", "dataset", "train_config", "encode_images", "encode_texts", "class_features",
              "logit_scale", "zero_shot_logits", "freeze", "weights", "trainable_parameters", "weights_changed", "fit",
              "features", "snapshot", "preprocess", "image_tower", "image_size", "autocast")
TOWERS = ("text", "image")


def _rows_of(value, total: int, pick: torch.Tensor):
    """A per-row (total, L, W) tensor cut to this rank's rows; anything else (shared (L, W) tokens, None) as is."""
    if isinstance(value, torch.Tensor) and value.ndim == 3 and value.shape[0] == total:
        return value[pick.to(value.device)]
    return value


class _Step(torch.nn.Module):
    """What DistributedDataParallel wraps for one ``fit``: the model and the method's own parameters; its forward
    runs one step's loss, so DDP sees one forward (however many passes the loss makes) per backward."""

    def __init__(self, model: torch.nn.Module, extra: list[torch.nn.Parameter]):
        super().__init__()
        self.model = model
        self.extra = torch.nn.ParameterList(extra)

    def forward(self, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        return step()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batches_with_ids(data: ImageSet, batch_size: int, generator: torch.Generator):
    """Shuffled (images, labels, dataset ids or None) batches; a set whose ``batches`` predates ids gives None."""
    if "with_ids" in inspect.signature(data.batches).parameters:
        yield from data.batches(batch_size, shuffle=True, generator=generator, with_ids=True)
    else:
        for images, labels in data.batches(batch_size, shuffle=True, generator=generator):
            yield images, labels, None


def _join_replayed(labels: torch.Tensor, ids: torch.Tensor | None, old: tuple) -> tuple:
    """The batch's labels and dataset ids followed by the replayed rows' (``old`` = a memory's ``sample(n)``: images,
    labels[, ids]); ids None unless both parts carry them."""
    joined = ids is not None and len(old) > 2 and old[2] is not None
    return torch.cat([labels, old[1]]), torch.cat([ids, old[2]]) if joined else None


class Encoders:
    """The feature methods shared by the Learner and its frozen snapshots (needs model, clip, dataset, device, autocast)."""

    model: torch.nn.Module
    _text_cache: dict

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned temperature exp(t), clamped at 100 as in CLIP's training: a scalar tensor on the device."""
        return self.model.logit_scale.exp().clamp(max=100)

    def encode_images(self, images: torch.Tensor, prompts: torch.Tensor | None = None,
                      prefixes: dict | None = None, adapters: dict | None = None) -> torch.Tensor:
        """L2-normalised image features (B, D) of preprocessed images (B, 3, S, S), with gradients when training.

        A method's own additions to a ViT image tower, none by default (clbench/image_tower.py):
        ``prompts`` (B, P, W) or (P, W) tokens after the class token before the first block
        (prompt tuning, L2P); ``prefixes`` {block: (keys, values)}, each (B, Lp, W) or (Lp, W),
        joined to that block's attention keys and values (prefix tuning, CODA-Prompt);
        ``adapters`` {block: f}, f((B, N, W)) -> (B, N, W) added beside the block's MLP
        (parallel adapters, MoE-Adapters). Blocks count from 0; ``image_tower`` gives W and the
        block count. UserError for a tower that cannot take them (not open_clip's ViT, or LoRA).
        """
        rows = self._rows_holding(images)
        if rows is None:
            return self._encode_images(images, prompts, prefixes, adapters)
        # train.devices > 1: this rank's rows of the global batch in, the whole batch's features out (distributed.py)
        prompts = _rows_of(prompts, rows.total, rows.local_index)
        if prefixes:
            prefixes = {block: tuple(_rows_of(t, rows.total, rows.local_index) for t in kv) for block, kv in prefixes.items()}
        return gather_rows(self._encode_images(images, prompts, prefixes, adapters), rows)

    def _encode_images(self, images, prompts, prefixes, adapters) -> torch.Tensor:
        if prompts is None and not prefixes and not adapters:
            return F.normalize(self.model.encode_image(images).float(), dim=-1)
        from .image_tower import encode

        return F.normalize(encode(self.model.visual, images, prompts, prefixes, adapters).float(), dim=-1)

    def _rows_holding(self, images) -> StepRows | None:
        """The current training step's rows when ``images`` are this rank's rows of its global batch, else None."""
        rows = getattr(self, "_rows", None)
        return rows if rows is not None and rows.holds(images) else None

    @property
    def image_tower(self):
        """The image tower's sizes for prompts and adapters: ``clbench.image_tower.TowerShape`` (``width`` W,
        ``blocks``, ``tokens``, ``heads``, ``output_dim``). UserError when the tower cannot be extended."""
        from .image_tower import tower_shape

        return tower_shape(self.model.visual)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text features (len(texts), D) of raw strings (tokenised here)."""
        tokens = self.clip.tokenizer(texts).to(self.device, non_blocking=True)  # no wait for the device
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def class_features(self, classes: Iterable[int], template: int | None = None, grad: bool = False) -> torch.Tensor:
        """Text features (len(classes), D) of class prompts.

        ``template=None`` averages every template of the dataset (CLIP's prompt
        ensemble); an int uses that template alone. Without ``grad`` the
        features are cached until the text tower next changes.
        """
        classes = [int(c) for c in classes]
        if grad:
            return self._class_features(classes, template)
        key = "all" if template is None else str(template)
        missing = [c for c in classes if (c, key) not in self._text_cache]
        if missing:
            batch = self._text_batch(missing, key)
            feats = self._encode_classes(batch, template)
            self._text_cache.update({(c, key): f for c, f in zip(batch, feats)})
        return torch.stack([self._text_cache[(c, key)] for c in classes])

    def _text_batch(self, missing: list[int], key: str) -> list[int]:
        """The classes to encode when ``missing`` are asked for (the Learner widens it; see there)."""
        return missing

    def _encode_classes(self, classes: list[int], template: int | None) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self._class_features(classes, template)

    def _class_features(self, classes: list[int], template: int | None) -> torch.Tensor:
        data = self.dataset
        per_class = [data.templates_of(c) for c in classes]
        if template is not None:
            n = min((len(t) for t in per_class), default=len(data.templates))
            if not 0 <= template < n:
                raise UserError(f"template: {template} but dataset '{data.name}' has {n} prompt template"
                                f"{'s' if n != 1 else ''}; use 0{'' if n == 1 else f'..{n - 1}'}")
            per_class = [[t[template]] for t in per_class]
        names = data.class_names
        prompts = [t.format(names[c]) for c, templates in zip(classes, per_class) for t in templates]
        feats = self.encode_texts(prompts)
        counts = [len(t) for t in per_class]
        if len(set(counts)) <= 1:  # the usual case: one reshape
            feats = feats.view(len(classes), counts[0] if counts else len(prompts), -1).mean(1)
        else:  # classes of different datasets carry different numbers of templates
            feats = torch.stack([chunk.mean(0) for chunk in feats.split(counts)])
        return F.normalize(feats, dim=-1)

    def zero_shot_logits(self, images: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """CLIP's rule: scaled cosine similarity to each class's prompt ensemble."""
        return self.logit_scale * self.encode_images(images) @ self.class_features(classes).t()



class Learner(Encoders):
    """The shared machinery of one cell: model, stream, training loop, evaluation, cost meters.

    For methods: ``device``; ``seed`` (the cell's seed, int); ``stream`` (``experiences``,
    ``seen(t)``: the classes learned through step t, old ones first); ``dataset`` (the stream's
    dataset: ``num_classes``, ``class_names``, ``templates``, ``train``); ``train_config`` (the
    cell's ``TrainConfig``); and the methods listed in ``METHOD_API``, each documented below.
    """

    def __init__(self, clip: ClipModel, stream: Stream, train: TrainConfig, seed: int):
        self.cfg = train
        self.seed = seed
        self.rank, self.ranks = world()  # train.devices > 1: this process is one rank of the cell's group
        self.device = pick_device(train.device)
        if self.ranks > 1:
            self.device = local_device(self.device.type)
        self._rows: StepRows | None = None  # this rank's rows of the step's global batch (ranks > 1, inside fit)
        self.clip = clip
        self.model = clip.model.to(self.device)
        self.stream = stream
        self.dataset = stream.dataset
        self.generator = torch.Generator().manual_seed(seed)  # data order, independent of model init
        self.cost = CostMeter()
        self.amp_dtype = self._amp_dtype(train.amp)
        self._mean = torch.tensor(clip.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(clip.std, device=self.device).view(1, 3, 1, 1)
        self._text_cache: dict[tuple[int, str], torch.Tensor] = {}
        self._image_cache: dict[int, tuple[int, torch.Tensor]] = {}  # id(image set) -> (weights version, features)
        self._weights_version = 0  # bumped whenever the image tower's weights change (cached image features go stale)
        self._text_version = 0  # bumped whenever the text tower's weights may have changed
        self.model_changed = False  # any weight changed since the model was built (checkpoints skip an unchanged model)
        # zero-shot features computed once per machine (clbench/shared_results.py); not between the ranks of a group,
        # whose evaluations are collectives that every rank must enter alike
        self.shared = SharedResults.default() if self.ranks == 1 else SharedResults(None)
        self._fingerprint = weights_fingerprint(self.model) if self.shared.folder is not None else None
        self.last_train_loss: float | None = None
        self.contrast_stats = ContrastStats(self.dataset.num_classes, self.device)  # the runner opens and closes experiences
        if train.data_on_device and self.device.type == "cuda":
            stream.to_device(self.device)
        if train.compile:
            self.model.encode_image = torch.compile(self.model.encode_image)
            self.model.encode_text = torch.compile(self.model.encode_text)

    # --- precision and preprocessing ---------------------------------------
    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        if amp == "none" or (amp == "auto" and self.device.type != "cuda"):
            return None
        return torch.float16 if amp == "fp16" else torch.bfloat16

    def autocast(self):
        """A context manager for the cell's mixed precision (``train.amp``; a no-op without it): what ``fit`` wraps
        every ``loss_fn`` call in, for a method's own passes outside ``fit``."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the model's input (float, resized and CLIP-normalised, on the device).

        ``fit`` does this for every batch it builds; a method that makes its own pass over an image
        set outside ``fit`` (e.g. EWC's Fisher information, ``exp.train.batches(n)``) uses it to
        build the same ``Batch`` a loss receives. It runs no mixed precision and computes no features.
        """
        x = images.to(self.device, non_blocking=True).float().div_(255)
        size = self.clip.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
        return (x - self._mean) / self._std

    @property
    def image_size(self) -> int:
        """The model's input side in pixels (``preprocess`` resizes to image_size × image_size), e.g. for
        building a dataset of a method's own whose files are decoded at a chosen size."""
        return self.clip.image_size

    @property
    def train_config(self) -> TrainConfig:
        """The cell's training settings (``batch_size``, ``epochs``, ``lr``, ...), frozen."""
        return self.cfg

    def weights_changed(self) -> None:
        """Say that the model's weights changed outside ``fit`` (e.g. a method averaged or restored them).

        Cached text features and cached image features of test sets are dropped; ``fit``
        does this itself for the towers it trains.
        """
        self._text_changed()
        self._weights_version += 1
        self.model_changed = True

    @property
    def image_tower_changed(self) -> bool:
        """Whether the image tower's weights changed since the model was built (its features are then not the initial ones)."""
        return self._weights_version > 0

    def _text_changed(self) -> None:
        self._text_cache.clear()
        self._text_version += 1

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's weights and buffers by name (its ``state_dict``): tensors sharing storage with the model.

        Edit them in place (e.g. interpolate towards saved weights), then call ``weights_changed()``.
        Copy them (``{k: v.clone() for k, v in ...}``) to keep a version.
        """
        return self.model.state_dict()

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters ``fit`` trains (``requires_grad``), by name: for penalties on them (e.g. EWC) and their gradients."""
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def freeze(self, tower: str) -> None:
        """Stop training one tower: ``"text"`` (everything outside ``visual.``) or ``"image"`` (``visual.``).

        A frozen text tower's class features are computed once and cached for the cell;
        a frozen image tower's test-set features are reused across evaluations.
        ValueError for another name.
        """
        if tower not in TOWERS:
            raise ValueError(f"freeze: unknown tower '{tower}'; use one of {', '.join(TOWERS)}")
        for name, p in self.model.named_parameters():
            if name.startswith("visual.") == (tower == "image"):
                p.requires_grad_(False)

    def _text_trainable(self) -> bool:
        return any(p.requires_grad for n, p in self.model.named_parameters() if not n.startswith("visual."))

    # --- training -----------------------------------------------------------
    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # biases, norms, logit scale
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum)
        return torch.optim.AdamW(groups, lr=self.cfg.lr, fused=self.device.type == "cuda" or None)

    def make_schedule(self, optimizer, total_steps: int):
        warmup = self.cfg.warmup_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if self.cfg.schedule == "constant":
                return 1.0
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def fit(self, exp: Experience, loss_fn: LossFn, data: ImageSet | None = None, epochs: int | None = None,
            replay=None, replay_batch_size: int = 0, parameters: Iterable[torch.nn.Parameter] = ()) -> None:
        """The shared loop: epochs over ``data`` (default: the experience's training set).

        It trains the model's parameters that require gradients and ``parameters``: the method's
        own (prompt pools, adapters, routers, on the Learner's device), in the same optimizer,
        schedule and mixed precision.

        ``loss_fn(batch)`` gets a ``clbench.Batch`` and returns a scalar tensor. With a
        non-empty ``replay`` memory (anything with ``len`` and ``sample(n)`` returning (uint8
        images, labels[, dataset ids]), e.g. ``clbench.buffer.ReplayBuffer``), every step
        appends up to ``replay_batch_size`` exemplars after the new images, so the loss sees
        one mixed batch whose last ``batch.n_replayed`` rows are replayed.
        """
        data = exp.train if data is None else data
        epochs = self.cfg.epochs if epochs is None else epochs
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in parameters:
            if p.requires_grad and all(p is not q for q in params):
                params.append(p)
        if not params:
            raise RuntimeError("fit: every parameter is frozen (model.adapter's towers and the method's freeze()) and the "
                               "method passed no parameters of its own, so there is nothing to train")
        optimizer = self.make_optimizer(params)
        steps_per_epoch = math.ceil(len(data) / self.cfg.batch_size)
        schedule = self.make_schedule(optimizer, epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        text_trainable = self._text_trainable()
        total_loss = torch.zeros((), device=self.device)
        sync_check = step_check(self.device)  # CLBENCH_SYNC_CHECK=error|record: no host sync in a step (sync_check.py)
        ddp = self._data_parallel(params) if self.ranks > 1 else None
        self.model.train()
        with self.cost.timing("train", self.device):
            for _ in range(epochs):
                for images, labels, ids, n_replayed, rows in self._train_batches(data, replay, replay_batch_size):
                    classes = labels.unique().tolist()  # labels live on the host here (on the device only with
                    # data_on_device, where this is one small sync per step)
                    x = self.preprocess(images)
                    y = labels.to(self.device, non_blocking=True)
                    if rows is not None:
                        rows.local.append(x)
                    batch = Batch(x, y, classes, exp, n_replayed, ids, rows)
                    self._rows = rows
                    with sync_check(host=(ids,)), self.contrast_stats.step():  # batch.ids live on the host by design
                        with self.autocast():
                            try:
                                loss = loss_fn(batch) if ddp is None else ddp(functools.partial(loss_fn, batch))
                            finally:
                                self._rows = None
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        if self.cfg.grad_clip:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        schedule.step()
                        total_loss += loss.detach().float()
                    self.cost.train_images += len(labels)
                    if text_trainable:
                        self._text_changed()
        if any(p.requires_grad for p in self.model.visual.parameters()):
            self._weights_version += 1  # cached image features are stale; a frozen image tower keeps them
        if any(p.requires_grad for p in self.model.parameters()):
            self.model_changed = True
        self.last_train_loss = float(total_loss) / max(1, epochs * steps_per_epoch)  # one sync per experience

    def _train_batches(self, data: ImageSet, replay, replay_batch_size: int):
        """One epoch's steps: (uint8 images of this process's rows, the global batch's labels (B,) and dataset ids (B,)
        or None on the host, replayed rows, ``StepRows`` or None in a single process).

        Every rank draws the same global batches (the same generator, ``ImageSet.batches``' order) and the same replay
        rows (the memory's own generator, the same memory on every rank), and loads only its block of each part.
        """
        use_replay = replay is not None and replay_batch_size
        if self.ranks == 1:
            for images, labels, ids in _batches_with_ids(data, self.cfg.batch_size, self.generator):
                n_replayed = 0
                if use_replay and len(replay):
                    old = replay.sample(replay_batch_size)
                    n_replayed = len(old[1])
                    images = torch.cat([images, old[0].to(images.device)])
                    labels, ids = _join_replayed(labels, ids, old)
                yield images, labels, ids, n_replayed, None
            return
        rank, size, B = self.rank, self.ranks, self.cfg.batch_size
        order = torch.randperm(len(data), generator=self.generator)  # as ImageSet.batches(shuffle=True) draws it
        batches = [order[start:start + B] for start in range(0, len(data), B)]
        mine = [idx[slice(*shard_bounds(len(idx), rank, size))] for idx in batches]
        start, end = shard_bounds(B, rank, size)  # this rank's rows of a full batch (train.batch_size >= devices)
        # the rank's rows of every batch in one pass of the set's own loader (decode workers), cut at the same places:
        # a last, smaller batch gives each rank at most as many rows as a full one
        loaded = iter(data.subset(torch.cat(mine)).batches(end - start)) if any(len(m) for m in mine) else iter(())
        all_ids = getattr(data, "ids", None)
        for idx, rows_here in zip(batches, mine):
            parts = [next(loaded)[0]] if len(rows_here) else []
            labels, ids = data.labels[idx], None if all_ids is None else all_ids[idx]
            positions = [torch.arange(*shard_bounds(len(idx), r, size)) for r in range(size)]
            n_replayed = 0
            if use_replay and len(replay):
                old = replay.sample(replay_batch_size)
                n_replayed = len(old[1])
                parts.append(old[0][slice(*shard_bounds(n_replayed, rank, size))])
                labels, ids = _join_replayed(labels, ids, old)
                positions = [torch.cat([p, len(idx) + torch.arange(*shard_bounds(n_replayed, r, size))])
                             for r, p in enumerate(positions)]
            parts = [p for p in parts if len(p)]
            if parts:
                images = torch.cat([p.to(parts[0].device) for p in parts])
            else:  # a batch smaller than the group: this rank encodes a padding row, dropped when gathered
                images = data.load(idx[:1])
            yield images, labels, ids, n_replayed, StepRows(positions, len(labels), rank)

    def _data_parallel(self, params: list[torch.nn.Parameter]):
        """DistributedDataParallel over the model and the method's own trained parameters, for one ``fit``.

        ``find_unused_parameters``: a step may leave trained parameters unused (prompts not selected, experts not
        routed to); a parameter unused on every rank keeps no gradient, as in one process.
        """
        from torch.nn.parallel import DistributedDataParallel

        in_model = {id(p) for p in self.model.parameters()}
        extra = [p for p in params if id(p) not in in_model]
        for p in extra:
            if not isinstance(p, torch.nn.Parameter):
                raise TypeError("fit(parameters=...): with train.devices > 1 each must be a torch.nn.Parameter "
                                "(DistributedDataParallel averages the gradients of parameters)")
        # the ranks' buffers are equal by construction: no syncing of buffers in every forward
        buffers = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
        return DistributedDataParallel(_Step(self.model, extra), find_unused_parameters=True, **buffers,
                                       device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @torch.no_grad()
    def features(self, data: ImageSet) -> torch.Tensor:
        """L2-normalised image features (N, D) of a whole set, on the device (e.g. for herding, prototypes)."""
        if self.ranks > 1 and len(data):  # each rank encodes its block; every rank gets the whole set's features
            start, end = shard_bounds(len(data), self.rank, self.ranks)
            part = data.subset(torch.arange(start, end) if end > start else torch.zeros(1, dtype=torch.long))
            return gather_set(self._features(part), len(data))
        return self._features(data)

    def _features(self, data: ImageSet) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        out = []
        for images, _ in data.batches(self.cfg.eval_batch_size):
            with self.autocast():
                out.append(self.encode_images(self.preprocess(images)))
        self.model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, device=self.device)

    def snapshot(self) -> "FrozenModel":
        """A frozen copy of the current model with the same feature methods (e.g. the previous model for distillation)."""
        import copy

        frozen = copy.deepcopy(self.model).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        return FrozenModel(frozen, self)

    # --- resume ---------------------------------------------------------------
    def state_dict(self) -> dict:
        c = self.cost
        return {"generator": self.generator.get_state(), "last_train_loss": self.last_train_loss,
                "cost": [c.train_images, c.train_seconds, c.eval_images, c.eval_seconds], "model_changed": self.model_changed,
                "towers_changed": [self._text_version > 0, self._weights_version > 0],
                "contrast": self.contrast_stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.last_train_loss = state["last_train_loss"]
        c = self.cost
        c.train_images, c.train_seconds, c.eval_images, c.eval_seconds = state["cost"]
        # a tower still as built keeps computing (and sharing) its features as in an uninterrupted cell; a checkpoint
        # written before these flags counts both towers as changed
        self.model_changed = state.get("model_changed", True)
        text_changed, image_changed = state.get("towers_changed", (True, True))
        self._text_cache.clear()
        self._image_cache.clear()
        self._text_version, self._weights_version = int(text_changed), int(image_changed)
        self.contrast_stats.load_state_dict(state.get("contrast"))

    # --- evaluation ---------------------------------------------------------
    @torch.no_grad()
    def accuracy(self, predict: PredictFn, data: ImageSet, classes: list[int]) -> float:
        """Top-1 accuracy of ``predict`` on ``data`` with the label space ``classes``."""
        self.model.eval()
        class_ids = torch.tensor(classes, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        part = data
        if self.ranks > 1:  # each rank scores its block of the set; the counts are summed
            part = data.subset(torch.arange(*shard_bounds(len(data), self.rank, self.ranks)))
        with self.cost.timing("eval", self.device):
            for images, labels in part.batches(self.cfg.eval_batch_size) if len(part) else ():
                with self.autocast():
                    scores = predict(self.preprocess(images), classes)
                predicted = class_ids[scores.argmax(dim=1)]
                correct += (predicted == labels.to(self.device)).sum()
            self.cost.eval_images += len(data)
        return int(all_reduce_sum(correct)) / len(data)

    def evaluate(self, predict: PredictFn | None, t: int, unseen_classes: bool = True,
                 from_features: bool = False) -> list[float | None]:
        """Row t of the accuracy matrix: every experience's test set after step t.

        ``predict=None`` means CLIP's zero-shot rule. With ``from_features``, ``predict`` takes
        L2-normalised image features (B, D) instead of images (``Method.predict_features``).
        Both reuse each test set's image features while the image tower has not changed.
        With ``unseen_classes=False`` a test set whose label space needs classes not seen
        through step t is skipped (None).
        """
        row, seen = [], set(self.stream.seen(t))
        for exp in self.stream.experiences:
            classes = self.stream.eval_classes(t, exp.index)
            skip = not unseen_classes and exp.index > t and not seen.issuperset(classes)
            row.append(None if skip else self._accuracy(predict, exp.test, classes, from_features))
        return row

    def evaluate_initial(self) -> list[float]:
        """Z[j]: the untouched model's zero-shot accuracy on experience j, scored as A[j-1][j] will be."""
        return [self._accuracy(None, exp.test, self.stream.eval_classes(exp.index - 1, exp.index)) for exp in self.stream.experiences]

    def _accuracy(self, predict, data: ImageSet, classes: list[int], from_features: bool = False) -> float:
        if predict is None:
            return self.zero_shot_accuracy(data, classes)
        return self.feature_accuracy(predict, data, classes) if from_features else self.accuracy(predict, data, classes)

    @torch.no_grad()
    def feature_accuracy(self, predict_features: PredictFn, data: ImageSet, classes: list[int]) -> float:
        """Top-1 accuracy of ``predict_features`` (features (B, D) -> scores) on the cached features of ``data``."""
        feats = self.image_features(data)
        class_ids = torch.tensor(classes, device=self.device)
        labels = data.labels.to(self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        step = self.cfg.eval_batch_size
        with self.cost.timing("eval", self.device):
            for start in range(0, len(feats), step):
                with self.autocast():
                    scores = predict_features(feats[start:start + step], classes)
                correct += (class_ids[scores.argmax(dim=1)] == labels[start:start + step]).sum()
        return int(correct) / len(data)

    @torch.no_grad()
    def image_features(self, data: ImageSet) -> torch.Tensor:
        """Features of a test set, computed once per model version (frozen models: once per cell)."""
        hit = self._image_cache.get(id(data))
        if hit is not None and hit[0] == self._weights_version:
            return hit[1]

        def compute() -> dict:
            with self.cost.timing("eval", self.device):
                feats = self.features(data)
                self.cost.eval_images += len(data)
            return {"features": feats}

        identity = self._initial_key("image_features", data) if self._weights_version == 0 else None
        if identity is None:
            feats = compute()["features"]
        else:
            with allow_host_sync("shared results: the model as built's test-set features, saved or loaded once per set"):
                feats = self.shared.get(identity, compute)["features"].to(self.device)
        self._image_cache[id(data)] = (self._weights_version, feats)
        return feats

    def _initial_key(self, what: str, data: ImageSet | None = None, **extra) -> dict | None:
        """The shared-results key of a zero-shot result of the model as built, or None when it cannot be shared
        (store off, or an image set without an ``identity()``)."""
        if self._fingerprint is None:
            return None
        tokenizer = self.clip.tokenizer
        key = {"what": what, "weights": self._fingerprint, "arch": self.clip.arch, "activation": self.clip.activation,
               "tokenizer": [type(tokenizer).__name__, getattr(tokenizer, "context_length", None)],
               "device": self.device.type, "amp": str(self.amp_dtype),
               "compile": self.cfg.compile, "torch": torch.__version__,
               # CPU float reductions depend on the thread count (docs/reliability.md, Determinism)
               "threads": torch.get_num_threads() if self.device.type == "cpu" else None, **extra}
        if data is not None:
            identity = getattr(data, "identity", None)
            images = identity() if callable(identity) else None
            if images is None:
                return None
            key.update(images=images, image_size=self.clip.image_size, mean=list(self.clip.mean), std=list(self.clip.std),
                       eval_batch_size=self.cfg.eval_batch_size)
        return key

    def _text_batch(self, missing: list[int], key: str) -> list[int]:
        """While the text tower is as built, every class of the stream and its control set not cached yet, in one
        pass (one shared result for every method of a stream); after it changed, only the classes asked for."""
        if self._text_version:
            return missing
        wanted = [*self.stream.class_order, *self.stream.control_classes, *missing]
        return [c for c in dict.fromkeys(wanted) if (c, key) not in self._text_cache]

    def _encode_classes(self, classes: list[int], template: int | None) -> torch.Tensor:
        if self._text_version:
            return super()._encode_classes(classes, template)
        key = self._initial_key("class_features", prompts=[self.dataset.prompts(c) for c in classes], template=template)
        if key is None:
            return self._encode_in_chunks(classes, template)
        with allow_host_sync("shared results: the text tower as built's class features, saved or loaded once per cell"):
            return self.shared.get(key, lambda: {"features": self._encode_in_chunks(classes, template)})["features"].to(self.device)

    def _encode_in_chunks(self, classes: list[int], template: int | None, prompts_per_pass: int = 4096) -> torch.Tensor:
        """Text features of many classes (ImageNet's 1,000 × 80 prompts) in passes of at most ``prompts_per_pass``
        prompts, so the text tower's activations stay small."""
        chunks, chunk, size = [], [], 0
        for c in classes:
            n = 1 if template is not None else len(self.dataset.templates_of(c))
            if chunk and size + n > prompts_per_pass:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(c)
            size += n
        chunks.append(chunk)
        return torch.cat([super(Learner, self)._encode_classes(part, template) for part in chunks if part])

    @torch.no_grad()
    def zero_shot_accuracy(self, data: ImageSet, classes: list[int]) -> float:
        feats = self.image_features(data)
        class_ids = torch.tensor(classes, device=self.device)
        scores = feats @ self.class_features(classes).t()
        return int((class_ids[scores.argmax(1)] == data.labels.to(self.device)).sum()) / len(data)

    def control_accuracy(self, predict: PredictFn | None = None, from_features: bool = False) -> float | None:
        """Accuracy on the held-out control classes (``predict`` as in ``evaluate``; None: CLIP's zero-shot rule),
        or None without a control set."""
        if self.stream.control is None:
            return None
        return self._accuracy(predict, self.stream.control, self.stream.control_classes, from_features)


class FrozenModel(Encoders):
    """A frozen copy of the model (``Learner.snapshot()``), with the Learner's feature methods.

    ``encode_images``, ``encode_texts``, ``class_features`` (cached per class and template),
    ``logit_scale`` and ``zero_shot_logits`` behave as the Learner's, on the copy's weights,
    never with gradients and with the Learner's mixed precision.
    """

    METHOD_API = ("encode_images", "encode_texts", "class_features", "logit_scale", "zero_shot_logits", "nbytes")

    def __init__(self, model: torch.nn.Module, learner: "Learner"):
        self.model = model
        self.clip = learner.clip
        self.dataset = learner.dataset
        self.device = learner.device
        self.autocast = learner.autocast
        self._text_cache = {}
        self._learner = learner

    def _rows_holding(self, images):
        return self._learner._rows_holding(images)  # the Learner's training step: gather the copy's features too

    @property
    def nbytes(self) -> int:
        """Bytes of the copy's weights and buffers (for ``Method.memory_summary``'s ``frozen_models``)."""
        from .memory import nbytes

        return nbytes(self.model)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return super().encode_images(images)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return super().encode_texts(texts)

    def class_features(self, classes: Iterable[int], template: int | None = None, grad: bool = False) -> torch.Tensor:
        return super().class_features(classes, template, grad=False)

"""Running one cell: build its stream, model and method, train through the stream, write its record."""
from __future__ import annotations

import math
import random
import traceback
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from .checkpoint import CellCheckpoint, rng_state, set_rng_state
from .config import TrainConfig
from .cost import CostMeter
from .events import ExperienceEnd
from .data.scenarios import build_stream
from .distributed import all_reduce_max, is_main, world
from .drift import DriftTracker
from .errors import UserError
from .learner import Learner, pick_device
from .manifest import manifest, model_facts
from .memory import memory_record
from .metrics import METRICS, compute_metrics
from .models import build_clip
from .state_check import check_method_state
from .suite import Cell


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_cell_stream(cell: Cell, plugins, image_size: int | None = None):
    """The cell's stream; a dataset with an ``input_size_option`` (file-based ones) gets ``image_size`` (the model's)
    there unless the suite set it."""
    from .data.decoded_cache import cached_dataset  # file-backed splits decoded once per machine, on first use

    cfg = cell.config["stream"]
    where = f"stream '{cell.stream_label}'"
    if cfg["scenario"] == "dataset_incremental":  # one dataset per experience (MTIL, X-TAIL)
        from .data.sequence import few_shot, merge_datasets

        parts = []
        for item in cfg["datasets"]:
            data = _build_dataset(plugins, item, image_size)
            parts.append((item["label"], few_shot(data, item["shots"], cell.seed) if item.get("shots") else data))
        size = image_size or max(_largest_side(d) for _, d in parts)
        # each part's test split, and its few-shot training images rather than its whole training split
        dataset = merge_datasets([(label, cached_dataset(d)) for label, d in parts], size)
        return build_stream(dataset, "dataset_incremental", cell.seed, cell.stream_label, where=where,
                            prompts=cfg.get("prompts"), label_space=cfg["label_space"])
    dataset = cached_dataset(_build_dataset(plugins, cfg, image_size))
    return build_stream(
        dataset, cfg["scenario"], cell.seed, cell.stream_label, steps=cfg["steps"], class_order=cfg["class_order"],
        domains=cfg["domains"], holdout_classes=cfg["holdout_classes"], where=where, prompts=cfg.get("prompts"),
    )


def _build_dataset(plugins, cfg: dict, image_size: int | None):
    """The dataset of a resolved ``{dataset, options, runtime_options}``; a file-based one decodes at ``image_size``."""
    plugin = plugins.datasets.get(cfg["dataset"])
    options = {**cfg["options"], **(cfg.get("runtime_options") or {})}
    size_key = plugin.input_size_option
    if image_size and size_key and options.get(size_key) is None:
        options[size_key] = image_size
    return plugin.build(options)


def _largest_side(dataset) -> int:
    return int(max(dataset.train.load(torch.tensor([0])).shape[-2:])) if len(dataset.train) else 1


def _base_record(cell: Cell) -> dict:
    return {
        "cell_id": cell.cell_id, "config": cell.config, "method": cell.method, "variant": cell.variant,
        "stream": cell.stream_label, "seed": cell.seed,
    }


def lost_record(cell: Cell, error: str) -> dict:
    """The record of a cell whose process kept dying (killed, out of memory, node lost) beyond its executor's retries.

    Its checkpoint stays, so ``--retry-failed`` resumes it from the last experience saved.
    """
    record = _base_record(cell)
    record.update(
        class_order=None, class_order_hash=None, acc_matrix=[], metrics={m: None for m in METRICS}, status="failed",
        error=error, failed_at_experience=None, traceback=None, buffer={"exemplars": 0, "bytes": 0}, cost={},
        manifest=manifest(torch.device("cpu"), cell.seed),
    )
    return record


def _memory_summary(method, learner) -> dict[str, int]:
    """The method's memory by kind, plus the harness's LoRA adapters (``model.adapter``) as ``adapters``."""
    summary = dict(method.memory_summary()) if method is not None else {}
    if learner is not None and learner.clip.adapter:
        from .adapters import adapter_bytes

        summary["adapters"] = summary.get("adapters", 0) + adapter_bytes(learner.model)
    return summary


def _json_checked(value, what: str):
    """``value`` if it can go into a JSON record as is (no NaN or inf, only JSON types), else ValueError naming ``what``."""
    import json

    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}() must return plain JSON values (str, int, finite float, bool, None, lists, dicts): {exc}") from None
    return value


def run_cell(cell: Cell, plugins, on_experience=None, checkpoints: Path | None = None) -> dict:
    """The cell's record; a failure inside the cell becomes a ``failed`` record, bad input a UserError.

    After each experience ``on_experience(ExperienceEnd)`` is called; by default that fires
    the ``clbench_experience_end`` hook here. A driver that runs cells in other processes
    passes a callback that ships the report home and fires the hook there, so hooks see
    every experience once, in the process that owns the run.

    With a ``checkpoints`` folder the cell saves its state after every experience but the
    last, and a later call resumes from the last one saved.
    """
    seed_everything(cell.seed)
    train = TrainConfig(**cell.config["train"])
    main = is_main()  # train.devices > 1: rank 0 alone reports experiences and writes checkpoints
    report_experience = (on_experience or plugins.experience_end) if main else (lambda report: None)
    record = _base_record(cell)
    record.update(class_order=None, class_order_hash=None, acc_matrix=[], metrics={m: None for m in METRICS})
    learner, method, step, resumed_at, model_info, drift = None, None, None, None, None, None
    try:
        clip = build_clip(cell.config["model"]["arch"], cell.config["model"]["pretrained"], pick_device(train.device),
                          cell.config["model"].get("adapter"))
        stream = build_cell_stream(cell, plugins, clip.image_size)
        record.update(
            class_order=stream.class_order, class_order_hash=stream.class_order_hash, control_classes=stream.control_classes,
            experiences=[{"classes": e.classes, "domain": e.domain, "train_size": len(e.train), "test_size": len(e.test)} for e in stream.experiences],
        )
        learner = Learner(clip, stream, train, cell.seed)
        model_info = model_facts(clip, learner.amp_dtype)
        method_cls = plugins.methods.get(cell.method)
        method = method_cls(method_cls.Params(**cell.params), learner)
        drift = DriftTracker(len(stream.experiences))
        features_of = lambda j: learner.image_features(stream.experiences[j].test)  # noqa: E731 (cached per model version)
        checkpoint = CellCheckpoint(checkpoints, cell.cell_id) if checkpoints else None
        saved = checkpoint.load(set_aside=main) if checkpoint else None
        if saved:
            try:
                if saved["model"] is not None:  # None: the weights were still as built
                    learner.model.load_state_dict(saved["model"])
                method_state = saved["method"]
            except Exception as exc:  # harness state this code cannot restore must not block the cell forever
                _restore_failed(checkpoint, main, exc)
            try:
                method.load_state_dict(method_state)
            except Exception as exc:  # the method's own code: keep the valid checkpoint, so a fixed method resumes from it
                raise RuntimeError(f"method '{cell.method}': load_state_dict could not restore its state from the checkpoint "
                                   f"({type(exc).__name__}: {exc}); kept {checkpoint.path}: fix load_state_dict and rerun "
                                   f"with --retry-failed to resume, or delete that file to start this cell over") from exc
            try:
                learner.load_state_dict(saved["learner"])
                drift.load_state_dict(saved.get("drift"), learner.device, features_of)
                set_rng_state(saved["rng"])
            except Exception as exc:
                _restore_failed(checkpoint, main, exc)
            initial, control_before, losses, start = saved["initial"], saved["control_before"], saved["losses"], saved["next_step"]
            record["acc_matrix"] = rows = list(saved["rows"])
            resumed_at = start
        else:
            initial = learner.evaluate_initial()
            control_before = learner.control_accuracy()
            drift.start(features_of)
            rows, losses, start = record["acc_matrix"], [], 0
        last = len(stream.experiences) - 1
        for step, exp in enumerate(stream.experiences):
            if step < start:
                continue
            learner.contrast_stats.begin_experience(old_classes(stream, exp))
            method.before_experience(exp)
            if method_cls.trains:
                method.train(exp)
            method.after_experience(exp)
            learner.contrast_stats.end_experience(exp.index)
            losses.append(learner.last_train_loss if method_cls.trains else None)
            rows.append(evaluate_step(learner, method, step))
            report = ExperienceEnd(cell, step, len(stream.experiences), rows[-1], losses[-1], [len(e.test) for e in stream.experiences], learner)
            if losses[-1] is not None and not math.isfinite(losses[-1]):
                report_experience(report)
                raise FloatingPointError(f"non-finite training loss ({losses[-1]}) in experience {step}; lower train.lr or set train.grad_clip")
            drift.step(step, features_of)
            if checkpoint and step < last:  # saved before the experience is reported done, so an interrupt after the report keeps it
                method_state = method.state_dict()
                # A state torch.load(weights_only=True) would refuse is a defect of the method's code, not of this
                # cell: every cell of the method would save it and lose it on resume. So it is a UserError (exit 2,
                # the run stops at the first save of its first cell, no record written) rather than a failed record
                # per cell, each after an experience of wasted work. Checked on every rank, so no rank waits alone.
                check_method_state(cell.method, method_state)
                state = {  # built on every rank (a method's state_dict may sum over ranks), written by rank 0
                    "next_step": step + 1, "rows": rows, "losses": losses, "initial": initial, "control_before": control_before,
                    "model": learner.model.state_dict() if learner.model_changed else None, "method": method_state, "learner": learner.state_dict(), "rng": rng_state(),
                    "drift": drift.state_dict(keep_features=learner.image_tower_changed),
                }
                if main:
                    checkpoint.save(state)
            report_experience(report)
        step = None
        control_after = control_step(learner, method)
        sizes = [len(e.test) for e in stream.experiences]
        drift_record = drift.record()
        record.update(
            status="done", initial_acc=initial, train_loss=losses,
            control_acc={"before": control_before, "after": control_after}, drift=drift_record,
            contrast=learner.contrast_stats.record(),
            metrics=compute_metrics(rows, sizes, initial, control_before, control_after,
                                    drift_record and drift_record["since_learned"]),
            method_state=_json_checked(method.record_extras(), "record_extras"),
        )
        record["memory"] = memory_record(_memory_summary(method, learner))  # a plugin's wrong value fails its cell only
    except UserError:
        raise
    except Exception as exc:  # a broken cell must not stop the grid
        record.update(
            status="failed", error=f"{type(exc).__name__}: {exc}", failed_at_experience=step,
            traceback=traceback.format_exc(limit=20),
        )
    try:
        record["buffer"] = _json_checked(method.buffer_summary() if method is not None else {"exemplars": 0, "bytes": 0}, "buffer_summary")
        record.setdefault("memory", memory_record(_memory_summary(method, learner)))
    except Exception as exc:  # a plugin's summary that cannot go into a record fails the cell, never the grid
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", failed_at_experience=None,
                      traceback=traceback.format_exc(limit=20), buffer={"exemplars": 0, "bytes": 0},
                      memory=memory_record({}))
    record["cost"] = (learner.cost if learner else CostMeter()).summary()
    if drift is not None:
        record["cost"]["drift_s"] = round(drift.seconds, 4)  # the drift matrices' own cost (drift.py), within wall_s
    ranks = world()[1]
    if ranks > 1:
        record["cost"]["devices"] = ranks  # device-hours = wall_s × devices
        if record.get("status") == "done":  # every rank got here: the group's peaks
            for key in ("peak_rss_mb", "peak_gpu_mb"):
                record["cost"][key] = all_reduce_max(record["cost"][key])
    if learner is not None:
        record["cost"]["shared_reused"] = learner.shared.hits  # zero-shot features loaded, not computed (shared_results.py)
    if resumed_at is not None:
        record["cost"]["resumed_at_experience"] = resumed_at
    record["manifest"] = manifest(learner.device if learner else pick_device(train.device), cell.seed, model_info)
    return record


def _restore_failed(checkpoint: CellCheckpoint, main: bool, exc: Exception) -> NoReturn:
    """Fail the cell on harness state (model weights, data order, drift, RNG) this code cannot restore; the checkpoint
    is moved aside (by rank 0) so a rerun starts over rather than failing on it forever."""
    aside = checkpoint.set_aside() if main else checkpoint.path
    raise RuntimeError(f"could not restore the checkpoint ({type(exc).__name__}: {exc}); moved it to "
                       f"{aside.name}: rerun to start this cell over") from exc


def old_classes(stream, exp) -> list[int]:
    """Classes seen before ``exp`` that ``exp`` does not teach (none in a domain-incremental stream)."""
    new = set(exp.classes)
    return [c for c in stream.seen(exp.index - 1) if c not in new] if exp.index > 0 else []


def evaluate_step(learner, method, step: int) -> list:
    """Row ``step`` of the accuracy matrix, reusing cached test-set image features where the method's scores allow."""
    cls = type(method)
    if cls.uses_zero_shot_rule():
        return learner.evaluate(None, step, cls.scores_unseen_classes)
    if cls.scores_from_features():
        return learner.evaluate(method.predict_features, step, cls.scores_unseen_classes, from_features=True)
    return learner.evaluate(method.predict, step, cls.scores_unseen_classes)


def control_step(learner, method):
    """Control-set accuracy after the last step with the method's own scores (its prompts, adapters, classifier),
    or, for a method that cannot score classes it never learned, the model's zero-shot rule."""
    cls = type(method)
    if not cls.scores_unseen_classes or cls.uses_zero_shot_rule():
        return learner.control_accuracy()
    if cls.scores_from_features():
        return learner.control_accuracy(method.predict_features, from_features=True)
    return learner.control_accuracy(method.predict)

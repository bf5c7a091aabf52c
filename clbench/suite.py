"""Suites: YAML -> a validated, frozen grid of cells.

A suite names a model, training settings, streams, methods and seeds. A list
under a method key is a grid axis. Reading the file and merging its
``include:`` files is clbench/suite_yaml.py's; this module validates the
merged mapping against the registered plugins and expands it into cells.
Every problem is a ``UserError`` naming the file and the key, e.g.
``suites/x.yaml: methods[1].lr: Input should be greater than 0``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import looks_like_path as _looks_like_path
from .config import ModelConfig, ReportConfig, STREAM_KEYS, StreamConfig, StreamPrompts, TrainConfig, reference_row
from .dataset_plugin import RUNTIME_OPTIONS, DatasetPlugin
from .errors import UserError
from .facts import ModelFacts, StreamFacts, stream_facts
from .metrics import METRICS
from .registry import did_you_mean, unknown_line
from .suite_yaml import _deep_merge, load_raw, read_yaml

__all__ = ["Cell", "Suite", "load_suite", "cell_id_of", "known_architectures", "dataset_options", "OptionProblem",
           "leaderboard_rows", "RUNTIME_OPTIONS", "RESULTS_VERSION", "TOP_KEYS", "METHOD_KEYS", "load_raw", "read_yaml"]

TOP_KEYS = ("name", "description", "include", "model", "train", "streams", "methods", "seeds", "report", "executor", "loggers")
METHOD_KEYS = ("name", "train", "streams")
EXTENSION_PREFIX = "x-"


@dataclass(frozen=True)
class Cell:
    """One job: a method variant on a stream with a model and a seed."""

    cell_id: str
    method: str
    variant: str  # the method's row label in tables, e.g. "finetune (loss=ce)"
    stream_label: str
    seed: int
    config: dict  # fully resolved; cell_id is its hash

    @property
    def params(self) -> dict:
        return self.config["params"]


@dataclass(frozen=True)
class Suite:
    """A validated suite: its cells (in grid order), report settings, executor and loggers."""

    name: str
    path: Path
    cells: tuple[Cell, ...]
    report: ReportConfig
    executor: str
    loggers: tuple[str, ...] = ()
    executor_options: Any = None  # the executor's validated Options (None: its defaults)


from .results import RESULTS_VERSION  # noqa: E402  (re-exported: kept importable from here)


def known_architectures() -> list[str]:
    """open_clip's model config names and clbench's own, read from their folders (no torch import: validate stays instant)."""
    import importlib.util

    folders = [Path(__file__).parent / "model_configs"]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.origin:
        folders.append(Path(spec.origin).parent / "model_configs")
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.json")})


def _check_arch(arch: str, file: Path) -> None:
    """``model.arch`` names a config open_clip knows, or a folder/hub source that build_clip reads itself."""
    if arch.startswith(("local-dir:", "hf-hub:")):
        return
    names = known_architectures()
    if names and arch.replace("/", "-") not in names:
        raise UserError(f"{file}: model.arch: unknown architecture '{arch}'{did_you_mean(arch, names)}; "
                        f"see open_clip.list_models(), or use 'local-dir:/path' with an open_clip_config.json")


def cell_id_of(config: dict) -> str:
    """A stable id: the hash of the canonical JSON of the resolved config, minus runtime-only options."""
    identity = json.loads(json.dumps(config))
    stream = identity.get("stream", {})
    stream.pop("runtime_options", None)
    identity.get("train", {}).pop("devices", None)  # where it runs, not what it is: resumes on any number of devices
    for item in stream.get("datasets") or []:  # a dataset-incremental stream's datasets: where and what they are called
        item.pop("runtime_options", None)  # are not what they are
        item.pop("label", None)
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def leaderboard_rows(records) -> list[str]:
    """The leaderboard's row labels for ``records`` (mappings with ``variant`` and ``config``: records, or cells as
    ``{"variant": c.variant, "config": c.config}``), in first-seen order.

    The labels clbench.aggregate gives, computed without pandas so ``validate`` stays instant: a record's
    ``variant``, with `` #<hash>`` added where one label covers several configurations (the config minus
    ``seed``, ``stream`` and ``train.devices``). tests/test_run_end.py checks that the two agree.
    """
    def key(config: dict) -> str:
        config = {k: v for k, v in config.items() if k not in ("seed", "stream")}
        if isinstance(config.get("train"), dict):
            config["train"] = {k: v for k, v in config["train"].items() if k != "devices"}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:6]

    pairs = [(r["variant"], key(r["config"])) for r in records]
    configs: dict[str, set[str]] = {}
    for variant, k in pairs:
        configs.setdefault(variant, set()).add(k)
    return list(dict.fromkeys(v if len(configs[v]) == 1 else f"{v} #{k}" for v, k in pairs))


def _check_reference(report: ReportConfig, cells, file: Path) -> None:
    """``report.reference`` names exactly one row of the suite's leaderboard (every cell done), else a UserError."""
    if report.reference is None:
        return
    rows = leaderboard_rows({"variant": c.variant, "config": c.config} for c in cells)
    row, hint = reference_row(report.reference, rows)
    if row is None:
        several = any(r.split(" ")[0] == report.reference for r in rows)  # the hint lists them
        known = "" if several else f"; its rows: {', '.join(rows)}"
        raise UserError(f"{file}: report.reference: no single row '{report.reference}' in the suite's leaderboard{hint}{known}; "
                        f"name one of its methods (with a single row) or a row label")


# --- validation ---------------------------------------------------------------

def _validate(model: type[BaseModel], data: Any, file: Path, where: str) -> BaseModel:
    if not isinstance(data, dict):
        raise UserError(f"{file}: {where}: must be a mapping, got {type(data).__name__}")
    try:
        return model(**data)
    except ValidationError as exc:
        loc, problem = _problem_of(exc, model)
        raise UserError(f"{file}: {f'{where}.{loc}' if loc else where}: {problem}") from None
    except TypeError as exc:
        raise UserError(f"{file}: {where}: {exc}") from None


def _problem_of(exc: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """(the dotted key, the one-line problem) of a pydantic error: its first error, as every suite error words it."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return loc, _unknown_key_line(str(err["loc"][-1]), model.model_fields)
    if not loc:  # a check across keys (a model validator): its own words say what is wrong, the input is every key
        return loc, str(err["msg"]).removeprefix("Value error, ")
    return loc, f"{err['msg']} (got {err.get('input')!r})"


def _unknown_key_line(key: str, allowed) -> str:
    return f"unknown key{did_you_mean(key, allowed)}; known keys: {', '.join(allowed)}"


def _unknown_key(file: Path, at: str, key: str, allowed) -> str:
    """``FILE: AT: unknown key (did you mean 'x'?); known keys: ...`` (AT is the key's full path)."""
    return f"{file}: {at}: {_unknown_key_line(key, allowed)}"


class OptionProblem(ValueError):
    """A dataset name or option that cannot work: ``key`` (``dataset`` or the option's dotted name) and ``problem`` (one line)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def dataset_options(plugins, name: str, options: dict, other_keys=()) -> tuple[type[DatasetPlugin], dict]:
    """The dataset plugin registered as ``name`` and ``options`` validated by its ``Options`` (defaults filled in, JSON values).

    The one check of a dataset and its options, shared by streams and by methods that name a dataset of
    their own (``clbench.datasets``); no data is read and torch is not imported. ``other_keys``: keys the
    caller accepts beside the dataset's own (a stream's ``scenario``, ``steps``, ...), listed in the
    "known keys" of an unknown key. Raises ``OptionProblem`` for an unknown dataset (with a did-you-mean
    and the registered names), an unknown option, or a value the dataset's ``Options`` refuses.
    """
    if name not in plugins.datasets:
        raise OptionProblem("dataset", unknown_line("dataset", name, plugins.datasets.names()))
    plugin: type[DatasetPlugin] = plugins.datasets.get(name)
    unknown = [k for k in options if k not in plugin.Options.model_fields]
    if unknown:
        raise OptionProblem(str(unknown[0]), _unknown_key_line(str(unknown[0]), sorted(set(other_keys) | set(plugin.Options.model_fields))))
    try:
        return plugin, plugin.Options(**options).model_dump(mode="json")
    except ValidationError as exc:
        raise OptionProblem(*_problem_of(exc, plugin.Options)) from None


def _check_keys(data: dict, allowed, file: Path, where: str) -> None:
    for key in data:
        if key not in allowed:
            raise UserError(_unknown_key(file, f"{where}.{key}" if where else str(key), key, allowed))


def _expand(entry: dict) -> list[dict]:
    """Every combination of the list-valued keys (one level of nesting too)."""
    axes: list[tuple[tuple[str, ...], list]] = []
    for key, value in entry.items():
        if isinstance(value, list):
            axes.append(((key,), value))
        elif isinstance(value, dict):
            axes.extend(((key, sub), v) for sub, v in value.items() if isinstance(v, list))
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        point = json.loads(json.dumps(entry))
        for (path, _), value in zip(axes, combo):
            target = point
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
        points.append(point)
    return points


def _label(name: str, point: dict) -> str:
    parts = []
    for key, value in sorted(point.items()):
        if key == "name":
            continue
        if isinstance(value, dict):
            parts.extend(f"{key}.{k}={v}" for k, v in sorted(value.items()))
        else:
            parts.append(f"{key}={value}")
    return f"{name} ({', '.join(parts)})" if parts else name


def _check_naming(cfg: StreamConfig, plugin: type[DatasetPlugin], options: dict, n_classes: int | None, file: Path,
                  where: str) -> None:
    """The stream's class order and prompts against what its dataset offers, known without reading the data.

    A dataset plugin declares its published orders in ``class_orders(options)`` and raw class
    names as ``offers_raw_names = True``; by default it offers ``seeded`` and the clip names only.
    """
    order = cfg.class_order
    if isinstance(order, str) and order != StreamConfig.SEEDED_ORDER:
        known = [StreamConfig.SEEDED_ORDER, *plugin.class_orders(options)]
        if order not in known:
            raise UserError(f"{file}: {where}.class_order: dataset '{cfg.dataset}' has no order '{order}'{did_you_mean(order, known)}; known: {', '.join(known)}")
    if isinstance(order, list) and n_classes is not None and sorted(order) != list(range(n_classes)):
        raise UserError(f"{file}: {where}.class_order: must be a permutation of 0..{n_classes - 1} for dataset '{cfg.dataset}'")
    if cfg.prompts and cfg.prompts.class_names == "raw" and not plugin.offers_raw_names:
        raise UserError(f"{file}: {where}.prompts.class_names: dataset '{cfg.dataset}' offers no raw class names; use clip")


def _resolved_naming(resolved: dict) -> dict:
    """``class_order: seeded`` as null and ``prompts`` without its defaults (absent when empty).

    Writing a default explicitly then gives the same cell, and suites that never name an
    order or prompts keep the cell ids they had before these keys existed.
    """
    if resolved.get("class_order") == StreamConfig.SEEDED_ORDER:
        resolved["class_order"] = None
    prompts = resolved.pop("prompts", None) or {}
    prompts = {k: v for k, v in prompts.items() if v != StreamPrompts.model_fields[k].default}
    if prompts:
        resolved["prompts"] = prompts
    return resolved


def _check_domains(cfg: StreamConfig, facts, file: Path, where: str) -> None:
    """The stream's ``domains`` and scenario against the domains its dataset declares (skipped when unknown)."""
    if facts.domains is None:
        return
    if cfg.domains is not None:
        bad = next((d for d in cfg.domains if d not in facts.domains), None)
        if bad is not None:
            have = ", ".join(facts.domains) or "no domains"
            raise UserError(f"{file}: {where}.domains: unknown domain '{bad}' for dataset '{cfg.dataset}'{did_you_mean(bad, facts.domains)}; it has {have}")
        dup = next((d for d in cfg.domains if cfg.domains.count(d) > 1), None)
        if dup is not None:
            raise UserError(f"{file}: {where}.domains: domain '{dup}' is listed twice; each domain once")
    if cfg.scenario == "domain_incremental":
        if not facts.domains:
            raise UserError(f"{file}: {where}.scenario: dataset '{cfg.dataset}' has no domains; use class_incremental")
        n = len(cfg.domains) if cfg.domains is not None else len(facts.domains)
        if cfg.steps is not None and cfg.steps != n:
            raise UserError(f"{file}: {where}.steps: a domain-incremental stream has one step per domain ({n}); drop 'steps'")


def _streams(raw, file: Path, plugins, train: dict) -> list[tuple[str, dict, StreamFacts]]:
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{file}: streams: must be a non-empty list of streams")
    out = []
    for i, entry in enumerate(raw):
        where = f"streams[{i}]"
        if isinstance(entry, str):
            entry = {"dataset": entry}
        if isinstance(entry, dict) and entry.get("prompts") is not None:
            _validate(StreamPrompts, entry["prompts"], file, f"{where}.prompts")  # its own keys in its errors
        cfg = _validate(StreamConfig, entry, file, where)
        if cfg.scenario == "dataset_incremental" or cfg.datasets is not None:
            out.append(_sequence_stream(cfg, file, where, plugins, train))
            continue
        if cfg.dataset is None:
            raise UserError(f"{file}: {where}.dataset: missing; name the stream's dataset (clbench list datasets)")
        if cfg.label_space is not None:
            raise UserError(f"{file}: {where}.label_space: only a dataset-incremental stream has one; drop it")
        try:
            plugin, options = dataset_options(plugins, cfg.dataset, dict(cfg.model_extra or {}), STREAM_KEYS)
        except OptionProblem as problem:
            raise UserError(f"{file}: {where}.{problem.key}: {problem.problem}" if problem.key else f"{file}: {where}: {problem.problem}") from None
        resolved = cfg.model_dump(mode="json", exclude={"name", "datasets", "label_space"})  # sequences' own keys: ids stay
        resolved = {k: v for k, v in resolved.items() if k in STREAM_KEYS}
        _validate(TrainConfig, _deep_merge(train, resolved.get("train") or {}), file, f"{where}.train")
        runtime = plugin.runtime_option_names()
        resolved["options"] = {k: v for k, v in options.items() if k not in runtime}
        resolved["runtime_options"] = {k: v for k, v in options.items() if k in runtime}
        if cfg.scenario == "class_incremental" and resolved["steps"] is None:
            resolved["steps"] = 1
        facts = plugin.facts(options)  # what the dataset knows without reading its data
        n_classes = facts.num_classes
        if n_classes is not None:
            held = cfg.holdout_classes
            if isinstance(held, list):
                outside = next((c for c in held if c >= n_classes), None)
                if outside is not None:
                    raise UserError(f"{file}: {where}.holdout_classes: class {outside} is not one of the dataset's {n_classes} "
                                    f"classes (0..{n_classes - 1}); list class ids below {n_classes}")
            usable = n_classes - (len(held) if isinstance(held, list) else held)
            if usable < 1:
                raise UserError(f"{file}: {where}.holdout_classes: {cfg.holdout_classes} leaves no class of the {n_classes} for the stream")
            if cfg.scenario == "class_incremental" and resolved["steps"] > usable:
                raise UserError(f"{file}: {where}.steps: {resolved['steps']} steps but the stream has only {usable} classes; use at most {usable}")
        _check_naming(cfg, plugin, options, n_classes, file, where)
        _check_domains(cfg, facts, file, where)
        resolved = _resolved_naming(resolved)
        base = options.get("set") if isinstance(options.get("set"), str) else cfg.dataset  # torchvision's sets by name
        label = cfg.name or (f"{base}-ci{resolved['steps']}" if cfg.scenario == "class_incremental" else f"{base}-di")
        templates = cfg.prompts.templates if cfg.prompts else None
        out.append((label, resolved, stream_facts(label, cfg.dataset, cfg.scenario, resolved["steps"], facts,
                                                  cfg.holdout_classes, cfg.domains, templates)))
    labels = [label for label, _, _ in out]
    dup = next((l for l in labels if labels.count(l) > 1), None)
    if dup:
        raise UserError(f"{file}: streams: two streams are labelled '{dup}'; give them different 'name' keys")
    return out


#: a dataset-incremental stream's own keys; every other stream key must stay at its default there
SEQUENCE_KEYS = ("name", "scenario", "datasets", "label_space", "prompts", "train")
SEQUENCE_ITEM_KEYS = ("dataset", "label", "shots")


def _sequence_item_label(item: dict) -> str:
    """An entry's label in tables: its ``label``, else the torchvision set or hub name, else the dataset's name."""
    return str(item.get("label") or item.get("set") or item.get("hub") or item["dataset"])


def _sequence_stream(cfg: StreamConfig, file: Path, where: str, plugins, train: dict) -> tuple[str, dict, StreamFacts]:
    """A dataset-incremental stream (MTIL, X-TAIL): one experience per entry of ``datasets``, in order.

    Each entry is ``{dataset: name, label: optional, <that dataset's options>}``, checked as a
    stream's dataset is. Resolved as ``{scenario, datasets: [{dataset, label, options,
    runtime_options}], label_space, prompts, train, steps: None}``.
    """
    if cfg.scenario != "dataset_incremental":
        raise UserError(f"{file}: {where}.datasets: a list of datasets makes a dataset-incremental stream; "
                        f"set scenario: dataset_incremental (or name one dataset with 'dataset')")
    if cfg.dataset is not None or cfg.model_extra:
        key = "dataset" if cfg.dataset is not None else next(iter(cfg.model_extra))
        hint = did_you_mean(key, SEQUENCE_KEYS) if key != "dataset" else ""
        raise UserError(f"{file}: {where}.{key}: not a key of a dataset-incremental stream{hint}; its keys: "
                        f"{', '.join(SEQUENCE_KEYS)} (each dataset and its options go in an entry of 'datasets')")
    if not isinstance(cfg.datasets, list) or len(cfg.datasets) < 2:
        raise UserError(f"{file}: {where}.datasets: a dataset-incremental stream needs a list of at least two datasets, "
                        f"each {{dataset: name, <its options>}}")
    defaults = StreamConfig(datasets=[{}, {}], scenario="dataset_incremental")
    for key in STREAM_KEYS - set(SEQUENCE_KEYS):
        if key != "dataset" and getattr(cfg, key) != getattr(defaults, key):
            raise UserError(f"{file}: {where}.{key}: a dataset-incremental stream has no '{key}' "
                            f"(one experience per dataset, in the listed order); drop it")
    items, labels, facts_of = [], [], []
    for k, item in enumerate(cfg.datasets):
        at = f"{where}.datasets[{k}]"
        if not isinstance(item, dict) or not isinstance(item.get("dataset"), str):
            raise UserError(f"{file}: {at}: must be a mapping with 'dataset' (a dataset plugin's name) and its options")
        options = {key: v for key, v in item.items() if key not in SEQUENCE_ITEM_KEYS}
        try:
            plugin, options = dataset_options(plugins, item["dataset"], options, SEQUENCE_ITEM_KEYS)
        except OptionProblem as problem:
            raise UserError(f"{file}: {at}{'.' + problem.key if problem.key else ''}: {problem.problem}") from None
        if "label" in item and not (isinstance(item["label"], str) and item["label"]):
            raise UserError(f"{file}: {at}.label: {item['label']!r}; use a non-empty string (the dataset's name in tables)")
        if cfg.prompts and cfg.prompts.class_names == "raw" and not plugin.offers_raw_names:
            raise UserError(f"{file}: {where}.prompts.class_names: dataset '{item['dataset']}' ({at}) offers no raw class "
                            f"names; use clip")
        shots = item.get("shots")
        if shots is not None and (not isinstance(shots, int) or isinstance(shots, bool) or shots < 1):
            raise UserError(f"{file}: {at}.shots: {shots!r}; use a whole number of training images per class (>= 1), or drop it")
        label = _sequence_item_label(item)
        if label in labels:
            raise UserError(f"{file}: {at}.label: '{label}' names two datasets of the sequence; give each a distinct 'label'")
        labels.append(label)
        runtime = plugin.runtime_option_names()
        items.append({"dataset": item["dataset"], "label": label,
                      "options": {key: v for key, v in options.items() if key not in runtime},
                      "runtime_options": {key: v for key, v in options.items() if key in runtime},
                      **({"shots": shots} if shots else {})})
        facts = plugin.facts(options)
        if facts.train_per_class is not None and facts.domains:  # per class and domain: a domain's images are images too
            facts = dataclasses.replace(facts, train_per_class=facts.train_per_class * len(facts.domains))
        if shots and facts.train_per_class is not None:
            facts = dataclasses.replace(facts, train_per_class=min(shots, facts.train_per_class))
        facts_of.append(facts)
    _validate(TrainConfig, _deep_merge(train, cfg.train or {}), file, f"{where}.train")
    resolved = _resolved_naming({"scenario": "dataset_incremental", "datasets": items, "label_space": cfg.label_space or "dataset",
                                 "steps": None, "prompts": cfg.prompts.model_dump(mode="json") if cfg.prompts else None,
                                 "train": cfg.train})
    label = cfg.name or "+".join(labels)
    known = all(f.num_classes is not None for f in facts_of)
    templates = cfg.prompts.templates if cfg.prompts and cfg.prompts.templates else None
    n_templates = len(templates) if templates else (min(f.num_templates for f in facts_of)
                                                    if all(f.num_templates is not None for f in facts_of) else None)
    train_sizes = [f.train_per_class * f.num_classes if f.train_per_class is not None and f.num_classes is not None else None
                   for f in facts_of]
    facts = StreamFacts(label, "+".join(item["dataset"] for item in items), "dataset_incremental", len(items),
                        sum(f.num_classes for f in facts_of) if known else None, n_templates, tuple(labels),
                        sum(train_sizes) if None not in train_sizes else None)
    return label, resolved, facts


def _methods(raw, file: Path, plugins, train: dict) -> list[tuple[str, str, dict, dict, str, list | None]]:
    """(name, variant label, params, the entry's own train overrides, where, the stream labels it is limited to or None)
    for every method grid point."""
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{file}: methods: must be a non-empty list of methods")
    out = []
    for i, entry in enumerate(raw):
        where = f"methods[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f"{file}: {where}: a method is a name or a mapping with a 'name' key")
        name = entry["name"]
        if name not in plugins.methods:
            raise UserError(f"{file}: {where}.name: {unknown_line('method', name, plugins.methods.names())}")
        method_cls = plugins.methods.get(name)
        _check_keys(entry, METHOD_KEYS + tuple(method_cls.Params.model_fields), file, where)
        entry = dict(entry)
        only = entry.pop("streams", None)  # limits the entry to these streams; never a grid axis
        if only is not None and (not isinstance(only, list) or not only or not all(isinstance(s, str) for s in only)):
            raise UserError(f"{file}: {where}.streams: must be a non-empty list of stream labels (their 'name' keys)")
        if only is not None and len(set(only)) != len(only):
            dup = next(s for s in only if only.count(s) > 1)
            raise UserError(f"{file}: {where}.streams: stream '{dup}' is listed twice; each stream once")
        for key, value in entry.items():
            if value == [] or (isinstance(value, dict) and any(v == [] for v in value.values())):
                raise UserError(f"{file}: {where}.{key}: an empty list makes an empty grid; give at least one value")
        for point in _expand(entry):
            params = {k: v for k, v in point.items() if k not in METHOD_KEYS}
            resolved_params = _validate(method_cls.Params, params, file, where).model_dump(mode="json")
            own_train = point.get("train", {}) or {}
            _validate(TrainConfig, _deep_merge(train, own_train), file, f"{where}.train")
            out.append((name, _label(name, point), resolved_params, own_train, where, only))
    return out


def _seeds(raw, file: Path) -> list[int]:
    seeds = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"{file}: seeds: must be a non-empty list of integers, e.g. [0, 1, 2]")
    dup = next((s for s in seeds if seeds.count(s) > 1), None)
    if dup is not None:
        raise UserError(f"{file}: seeds: seed {dup} is listed twice; each seed once")
    return seeds


def _executor(raw: Any, file: Path, plugins) -> tuple[str, Any]:
    """``executor: NAME`` or ``executor: {name: NAME, <the executor's options>}``."""
    if isinstance(raw, dict):
        options = dict(raw)
        name = options.pop("name", None)
        if name is None:
            raise UserError(f"{file}: executor: a mapping needs 'name' (e.g. name: ray) next to the executor's options")
    else:
        name, options = raw, {}
    if not isinstance(name, str) or name not in plugins.executors:
        raise UserError(f"{file}: executor: {unknown_line('executor', name, plugins.executors.names())}")
    model = getattr(plugins.executors.get(name), "Options", None)
    if model is None:
        if options:
            raise UserError(f"{file}: executor: executor '{name}' takes no options; remove {', '.join(options)}")
        return name, None
    return name, _validate(model, options, file, "executor")


def load_suite(path, plugins=None) -> Suite:
    """Read, validate and expand a suite file into its cells (``plugins``: a ``clbench.plugins.Plugins``, default the process's).

    Raises UserError naming the file and the key for anything the suite gets wrong, before any data is read.
    """
    from .plugins import get_plugins

    plugins = plugins or get_plugins()
    file = Path(path)
    raw = load_raw(file)
    # top-level keys starting with "x-" hold YAML anchors for reuse (as docker compose's extension fields) and mean nothing else
    raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}
    _check_keys(raw, TOP_KEYS, file, "")
    name = raw.get("name", file.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise UserError(f"{file}: name: must be a non-empty string without '/'")
    raw_model = raw.get("model", {}) or {}
    if isinstance(raw_model, dict) and isinstance(raw_model.get("adapter"), dict):  # its own keys in its errors
        from .config import AdapterConfig

        _validate(AdapterConfig, raw_model["adapter"], file, "model.adapter")
    model = _validate(ModelConfig, raw_model, file, "model").resolved()  # no adapter key without adapters: ids stay
    _check_arch(model["arch"], file)
    if model.get("adapter"):  # what is known without building the model: peft installed, the layers' names
        from .adapters import adapter_problem

        problem = adapter_problem(model["arch"], model["adapter"])
        if problem:
            raise UserError(f"{file}: {problem[0]}: {problem[1]}")
    pretrained = model.get("pretrained")
    if pretrained and _looks_like_path(pretrained) and not Path(pretrained).expanduser().is_file():
        raise UserError(f"{file}: model.pretrained: checkpoint file '{pretrained}' not found; put the weights there or fix the path")
    train_raw = raw.get("train", {}) or {}
    _validate(TrainConfig, train_raw, file, "train")
    report = _validate(ReportConfig, raw.get("report", {}) or {}, file, "report")
    bad = next((m for m in report.metrics if m not in METRICS), None)
    if bad:
        raise UserError(f"{file}: report.metrics: {unknown_line('metric', bad, METRICS)}")
    executor, executor_options = _executor(raw.get("executor", "local"), file, plugins)
    loggers = raw.get("loggers", []) or []
    if not isinstance(loggers, list) or not all(isinstance(x, str) for x in loggers):
        raise UserError(f"{file}: loggers: must be a list of logger names, e.g. [csv, tensorboard]")
    for logger in loggers:  # not `name`: that is the suite's name, which names its results folder
        if logger not in plugins.loggers:
            raise UserError(f"{file}: loggers: {unknown_line('logger', logger, plugins.loggers.names())}")
    if "streams" not in raw or "methods" not in raw:
        missing = "streams" if "streams" not in raw else "methods"
        raise UserError(f"{file}: {missing}: missing; a suite needs 'streams' and 'methods'")
    from .adapters import image_blocks, tower_kinds

    model_facts = ModelFacts(model["arch"], tower_kinds(model["arch"])["image"], image_blocks(model["arch"]),
                             tuple((model.get("adapter") or {}).get("towers") or ()))
    streams = _streams(raw["streams"], file, plugins, train_raw)
    methods = _methods(raw["methods"], file, plugins, train_raw)
    seeds = _seeds(raw.get("seeds", [0]), file)

    labels = [label for label, _, _ in streams]
    for *_, where, only in methods:
        bad = next((s for s in only or () if s not in labels), None)
        if bad is not None:
            raise UserError(f"{file}: {where}.streams: {unknown_line('stream', bad, labels)}")
    cells, ids, checked = [], set(), set()
    for (label, stream, facts), (method, variant, params, method_train, where, only), seed in itertools.product(streams, methods, seeds):
        if only is not None and label not in only:
            continue
        stream = dict(stream)
        stream_train = stream.pop("train", None) or {}
        # suite defaults < the stream's overrides < the method entry's overrides
        train_cfg = TrainConfig(**_deep_merge(_deep_merge(train_raw, stream_train), method_train))
        if (label, variant) not in checked:  # the method's ranges that depend on the stream (template, memory, ...)
            checked.add((label, variant))
            method_cls = plugins.methods.get(method)
            if facts.scenario not in method_cls.scenarios:
                raise UserError(f"{file}: {where}.name: method '{method}' is built for {' and '.join(method_cls.scenarios)} "
                                f"streams, not stream '{label}' ({facts.scenario}); pair it with another stream")
            extra = {"model": model_facts} if "model" in inspect.signature(method_cls.check).parameters else {}
            problems = method_cls.check(method_cls.Params(**params), facts, train_cfg, **extra)
            if problems:
                key, problem = next(iter(problems.items()))
                raise UserError(f"{file}: {where}.{key}: {problem}")
        train = train_cfg.model_dump(mode="json")
        config = {"method": method, "params": params, "stream": stream, "model": model, "train": train, "seed": seed,
                  "results_version": RESULTS_VERSION}
        cid = cell_id_of(config)
        if cid in ids:
            raise UserError(f"{file}: methods: two entries give the same cell ({variant} on {label}, seed {seed}); remove the duplicate")
        ids.add(cid)
        cells.append(Cell(cid, method, variant, label, seed, config))
    _check_reference(report, cells, file)
    return Suite(name, file, tuple(cells), report, executor, tuple(loggers), executor_options)

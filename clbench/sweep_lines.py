"""Which records make one line of a memory sweep: buffer settings, stripped labels, the x axis, mean ± std.

Shared by the PNG figures (plots.py) and the HTML report's sweep (report_mechanism.py): a line is one
method variant across buffer settings (its label with the buffer item removed), its points the seeds
at each memory size.
"""
from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

MEMORY_LABEL = "memory (exemplars at the end)"
_HASH = re.compile(r" #[0-9a-f]{6}$")  # the suffix aggregate.tidy adds where one label covers several configs


def buffer_amount(record: dict):
    """(kind, value) of a replay record's buffer setting, e.g. ('fraction', 0.02); None without a buffer."""
    spec = ((record.get("config") or {}).get("params") or {}).get("buffer")
    if not isinstance(spec, dict):
        return None
    for kind in ("fraction", "per_class", "size"):
        if spec.get(kind) is not None:
            return kind, spec[kind]
    return None


def exemplars(record: dict):
    """The record's replay memory at the end of its run, in exemplars (``buffer.exemplars``); None when unknown or 0."""
    n = (record.get("buffer") or {}).get("exemplars")
    return n if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 else None


def _split_items(inner: str) -> list[str]:
    """``inner`` split at the ", " that are not inside brackets (a value may be a list or a mapping)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and inner.startswith(", ", i):
            items.append(inner[start:i])
            start = i + 2
    return items + [inner[start:]]


def without_buffer(variant: str) -> str:
    """The variant label with its buffer setting taken out, so a sweep's labels name one line.

    Labels are ``name (key=value, ...)`` as suites write them (clbench/suite.py), a nested key as
    ``buffer.per_class=1``: every item ``buffer.…=…`` or ``buffer=…`` goes, and the parentheses with the
    last one. ``"dro_replay (buffer.per_class=1, update=kl)"`` → ``"dro_replay (update=kl)"``,
    ``"er (buffer.per_class=1)"`` → ``"er"``. Anything after the closing parenthesis (``" [order …]"``)
    is kept; a label without a buffer item, without parentheses or with unbalanced ones comes back as it is.
    """
    start = variant.find(" (")
    if start < 0:
        return variant
    depth = 0
    for end in range(start + 1, len(variant)):
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(variant[end], 0)
        if depth == 0:
            break
    else:
        return variant
    items = _split_items(variant[start + 2:end])
    kept = [item for item in items if not re.match(r"buffer[.=]", item)]
    if len(kept) == len(items):
        return variant
    return variant[:start] + (f" ({', '.join(kept)})" if kept else "") + variant[end + 1:]


def buffer_lines(records) -> dict[str, dict[str, list[dict]]]:
    """stream -> line label -> records: the records with a buffer setting, one line per method variant.

    A line is the records whose configs are the same but for the seed, the stream, the buffer setting and
    ``train.devices`` (clbench/memo.py's curves), so variants that differ in anything else (``update=kl``,
    ``update=uniform``) stay apart whatever their labels say. Its label is the records' variant label with
    the buffer setting removed (:func:`without_buffer`, and a ``#hash`` suffix from aggregate.tidy
    dropped) when they agree on it, else the method name; ``label #<config hash>`` where two lines of
    a stream would get the same label. Records without a buffer setting are left out.
    """
    from .memo import _curve_key

    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if buffer_amount(r):
            groups[r["stream"]][_curve_key(r)].append(r)
    out: dict[str, dict[str, list[dict]]] = {}
    for stream, by_key in groups.items():
        named = []
        for key, rs in by_key.items():
            labels = {without_buffer(_HASH.sub("", r["variant"])) for r in rs}
            named.append((labels.pop() if len(labels) == 1 else rs[0]["method"], key, rs))
        count = defaultdict(int)
        for label, _, _ in named:
            count[label] += 1
        out[stream] = {(label if count[label] == 1 else f"{label} #{key}"): rs for label, key, rs in sorted(named, key=lambda n: n[:2])}
    return out


def sweep_x(records) -> tuple[str, dict[int, float]]:
    """The x axis of a stream's buffer sweep: (axis label, id(record) -> x).

    x is the buffer rule's value (``fraction``, ``per_class`` or ``size``) when the stream's records
    share one kind of rule, else (kinds mixed: their values are not on one scale) the record's
    ``buffer.exemplars`` at the end. Records without a usable x (no rule; no exemplars) are left out.
    """
    amounts = {id(r): buffer_amount(r) for r in records}
    kinds = {a[0] for a in amounts.values() if a}
    if len(kinds) == 1:
        return f"buffer ({kinds.pop()})", {i: a[1] for i, a in amounts.items() if a and a[1] and a[1] > 0}
    return MEMORY_LABEL, {id(r): exemplars(r) for r in records if amounts[id(r)] and exemplars(r)}


def metric_of(record: dict, metric: str):
    """The record's value of ``metric`` as a float, or None when missing, null or NaN."""
    value = (record.get("metrics") or {}).get(metric)
    return None if value is None or value != value else float(value)


def mean_std(values) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1, 0 for one value) of ``values``; (nan, nan) when empty."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def sweep_points(records):
    """Per stream with a sweep: (stream, x axis label, {line label: {x: records}}), streams sorted.

    Lines and x as :func:`buffer_lines` and :func:`sweep_x`; lines without a usable x are dropped, and a
    stream is left out unless some line has two x values or more (one buffer size: nothing to sweep).
    """
    for stream, lines in sorted(buffer_lines(records).items()):
        xlabel, x_of = sweep_x([r for rs in lines.values() for r in rs])
        points = {label: defaultdict(list) for label in lines}
        for label, rs in lines.items():
            for r in rs:
                if id(r) in x_of:
                    points[label][x_of[id(r)]].append(r)
        points = {label: by_x for label, by_x in points.items() if by_x}
        if max((len(by_x) for by_x in points.values()), default=0) >= 2:
            yield stream, xlabel, points

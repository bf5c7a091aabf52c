"""Accuracy against total memory, and the area under that curve (MEMO: Zhou, Wang, Ye, Zhan, ICLR 2023).

"A Model or 603 Exemplars" compares class-incremental methods at equal *total* memory:
exemplars plus everything else a method stores beyond the shared model, in MB, and sums
a method up by the area under its accuracy–memory curve. What clbench computes (docs/report.md):

- memory of a record, in MB (10^6 bytes): ``buffer.bytes`` + every kind in ``memory.bytes``
  except ``replay_images`` (that kind is the buffer itself, already counted); a record made
  before clbench recorded ``memory`` counts its buffer alone, and its curve says so;
- a curve per method and stream: one point per buffer setting of its sweep, x = mean memory
  over seeds, y = mean metric over seeds; records that differ in anything but the seed, the
  stream and the buffer setting are separate curves (``train.devices`` does not count, as
  in the cell id: it says where a cell ran, not what it is);
- its area: the trapezoidal rule over the memory range the compared curves all cover (the
  largest of their smallest memories to the smallest of their largest), divided by that range,
  so it reads as a mean accuracy over it. The compared curves: the largest set of swept curves
  whose ranges share an interval (ties: the wider interval, then the lower one); a curve
  outside it, or of one point, gets no area and says why.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

MB = 1_000_000
ONE_POINT = "one memory size only: no curve to integrate (sweep its buffer size to get an area)"
NO_OVERLAP = "the compared curves cover no common memory range"


def memory_mb(record: dict) -> float:
    """The record's total memory beyond the shared model, in MB: buffer bytes + every other kind it keeps."""
    kinds = (record.get("memory") or {}).get("bytes") or {}
    extra = sum(v for k, v in kinds.items() if k != "replay_images")
    return ((record.get("buffer") or {}).get("bytes", 0) + extra) / MB


def _curve_key(record: dict) -> str:
    """What makes a curve: the config minus the seed, the stream, the buffer setting and (as in the cell id) train.devices."""
    config = dict(record.get("config") or {})
    config.pop("seed", None)
    config.pop("stream", None)
    config["train"] = {k: v for k, v in (config.get("train") or {}).items() if k != "devices"}
    config["params"] = {k: v for k, v in (config.get("params") or {}).items() if k != "buffer"}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:6]


def _buffer_setting(record: dict) -> str:
    return json.dumps((record.get("config") or {}).get("params", {}).get("buffer"), sort_keys=True, default=str)


@dataclass
class Curve:
    label: str
    memory: list[float]  # MB, increasing
    accuracy: list[float]  # mean over seeds, a fraction
    seeds: list[int]  # records per point
    area: float | None = None
    why: str = ""  # why there is no area
    buffer_only: int = 0  # records without a 'memory' field (older clbench): their memory is the buffer alone


@dataclass
class MemoResult:
    metric: str
    curves: list[Curve]
    range: tuple[float, float] | None = None  # the common memory range the areas are over
    notes: list[str] = field(default_factory=list)


def area_over(memory, accuracy, lo: float, hi: float) -> float:
    """Mean of the piecewise-linear curve over [lo, hi] (trapezoidal rule / (hi - lo)); memory increasing, lo < hi."""
    x = np.asarray(memory, dtype=float)
    y = np.asarray(accuracy, dtype=float)
    inside = (x > lo) & (x < hi)
    xs = np.concatenate([[lo], x[inside], [hi]])
    ys = np.interp(xs, x, y)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / (hi - lo))


def curves(records: list[dict], metric: str = "last") -> dict[str, MemoResult]:
    """Per stream label: each method's accuracy–memory curve and its area (records deduplicated and done)."""
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("status") == "done" and (r.get("metrics") or {}).get(metric) is not None:
            groups[r["stream"]][_curve_key(r)].append(r)
    out = {}
    for stream, by_key in groups.items():
        methods = defaultdict(set)
        for key, rs in by_key.items():
            methods[rs[0]["method"]].add(key)
        result = MemoResult(metric, [])
        for key, rs in by_key.items():
            variants = {r["variant"] for r in rs}
            label = variants.pop() if len(variants) == 1 else rs[0]["method"] + (f" #{key}" if len(methods[rs[0]["method"]]) > 1 else "")
            points = defaultdict(list)
            for r in rs:
                points[_buffer_setting(r)].append(r)
            xy = sorted((float(np.mean([memory_mb(r) for r in p])), float(np.mean([r["metrics"][metric] for r in p])), len(p))
                        for p in points.values())
            result.curves.append(Curve(label, [p[0] for p in xy], [p[1] for p in xy], [p[2] for p in xy],
                                       buffer_only=sum("memory" not in r for r in rs)))
        _areas(result)
        out[stream] = result
    return out


def _areas(result: MemoResult) -> None:
    """Areas over the widest memory range shared by the most swept curves; the others say why they have none."""
    swept = [c for c in result.curves if len(c.memory) > 1 and c.memory[-1] > c.memory[0]]
    for c in result.curves:
        if c not in swept:
            c.why = ONE_POINT
    groups = []
    for start in sorted({c.memory[0] for c in swept}):
        group = [c for c in swept if c.memory[0] <= start <= c.memory[-1]]
        lo, hi = max(c.memory[0] for c in group), min(c.memory[-1] for c in group)
        if hi > lo:
            groups.append((len(group), hi - lo, -lo, group, lo, hi))
    best = max(groups, key=lambda g: g[:3], default=None)
    if best is None or (best[0] == 1 and len(swept) > 1):
        for c in swept:
            c.why = NO_OVERLAP
        if swept:
            result.notes.append(NO_OVERLAP + ": " + ", ".join(f"{c.label} {c.memory[0]:.3f}–{c.memory[-1]:.3f} MB" for c in swept))
        return
    _, _, _, group, lo, hi = best
    result.range = (lo, hi)
    for c in swept:
        if c in group:
            c.area = area_over(c.memory, c.accuracy, lo, hi)
        else:
            c.why = f"its memory ({c.memory[0]:.3f}–{c.memory[-1]:.3f} MB) does not reach the range the other curves share"

"""From records to numbers: one tidy row per cell and metric, then mean ± std over seeds.

Records are grouped by their whole configuration minus the seed, so runs that
differ in anything else (another learning rate, another stream setting) are
never averaged together: they get distinct labels ('#<config hash>'). The
same cell found twice (results merged from several machines) counts once;
if the copies disagree on the class order they are kept apart and labelled
'[order <hash>]'.
"""
from __future__ import annotations

import hashlib
import json

import pandas as pd

from .metrics import HIGHER_IS_BETTER, METRICS


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:6]


def _method_key(record: dict) -> str:
    """What makes a row: the config minus the seed, the stream and ``train.devices`` (where a cell ran, not what it
    is: left out of cell ids too, so records from any number of devices, and from before the key, share a row)."""
    config = {k: v for k, v in record["config"].items() if k not in ("seed", "stream")}
    if isinstance(config.get("train"), dict):
        config["train"] = {k: v for k, v in config["train"].items() if k != "devices"}
    return _hash(config)


def _stream_key(record: dict) -> str:
    """The stream's identity: its config without the options that only say where or how fast data is read."""
    return _hash({k: v for k, v in (record["config"].get("stream") or {}).items() if k != "runtime_options"})


def _labels(done: list[dict], label_key: str, config_key) -> dict[str, str]:
    """cell_id -> label, with '#hash' added where one label covers several configs."""
    keys: dict[str, set[str]] = {}
    for r in done:
        keys.setdefault(r[label_key], set()).add(config_key(r))
    return {
        r["cell_id"]: r[label_key] if len(keys[r[label_key]]) == 1 else f"{r[label_key]} #{config_key(r)}" for r in done
    }


def is_current(record: dict) -> bool:
    """Whether a record was made under this clbench's definitions (its config's ``results_version``)."""
    from .results import RESULTS_VERSION

    return (record.get("config") or {}).get("results_version", 1) == RESULTS_VERSION


def dedupe(records: list[dict]) -> tuple[list[dict], list[str]]:
    """Done, current records with one copy per (cell, class order); the cell ids whose copies disagree on class order.

    Records from an older ``results_version`` are left out (see ``stale``).
    """
    by_key: dict[tuple, dict] = {}
    for r in records:
        if r.get("status") != "done" or not is_current(r):
            continue
        key = (r["cell_id"], r.get("class_order_hash"))
        created = (r.get("manifest") or {}).get("created", "")
        if key not in by_key or created > (by_key[key].get("manifest") or {}).get("created", ""):
            by_key[key] = r
    orders: dict[str, set] = {}
    for cid, order in by_key:
        orders.setdefault(cid, set()).add(order)
    conflicts = sorted(cid for cid, o in orders.items() if len(o) > 1)
    out = []
    for (cid, order), r in by_key.items():
        if cid in conflicts:
            r = dict(r, variant=f"{r['variant']} [order {str(order)[:6]}]")
        out.append(r)
    return out, conflicts


def stale(records: list[dict]) -> int:
    """How many done records come from an older results version (and are left out of tables and plots)."""
    return sum(r.get("status") == "done" and not is_current(r) for r in records)


def tidy(records: list[dict]) -> pd.DataFrame:
    """One row per done record and metric (records already deduplicated)."""
    done = [r for r in records if r.get("status") == "done"]
    variants = _labels(done, "variant", _method_key)
    streams = _labels(done, "stream", _stream_key)
    rows = [
        {
            "method": r["method"], "variant": variants[r["cell_id"]], "stream": streams[r["cell_id"]], "metric": metric,
            "seed": r["seed"], "cell_id": r["cell_id"], "value": r["metrics"].get(metric),
        }
        for r in done
        for metric in METRICS
    ]
    columns = ["method", "variant", "stream", "metric", "seed", "cell_id", "value"]
    return pd.DataFrame(rows, columns=columns)


def aggregate(cells: pd.DataFrame) -> pd.DataFrame:
    """mean, std (ddof=1; 0 for one seed), n per (variant, stream, metric), and whether it is the column's best."""
    cells = cells.dropna(subset=["value"])
    grouped = cells.groupby(["variant", "stream", "metric"], sort=False)["value"]
    agg = grouped.agg(mean="mean", std="std", n="count").reset_index()
    agg["std"] = agg["std"].fillna(0.0)
    agg["best"] = False
    for (stream, metric), col in agg.groupby(["stream", "metric"]):
        target = col["mean"].max() if HIGHER_IS_BETTER[metric] else col["mean"].min()
        agg.loc[col.index, "best"] = (col["mean"] - target).abs() < 1e-12
    return agg




def paired_differences(cells: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per (variant, stream, metric): mean of (variant − reference) over matching seeds, n pairs, paired t-test p."""
    from scipy import stats

    ref = cells[cells.variant == reference].set_index(["stream", "metric", "seed"])["value"]
    rows = []
    for (variant, stream, metric), group in cells[cells.variant != reference].groupby(["variant", "stream", "metric"], sort=False):
        pairs = [(v, ref.get((stream, metric, seed))) for seed, v in zip(group.seed, group.value)]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None and pd.notna(a) and pd.notna(b)]
        if not pairs:
            continue
        diffs = [a - b for a, b in pairs]
        mean = sum(diffs) / len(diffs)
        if len(diffs) < 2:
            p = float("nan")
        elif max(diffs) - min(diffs) < 1e-12:
            p = 0.0 if abs(mean) > 1e-12 else 1.0
        else:
            p = float(stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
        rows.append({"variant": variant, "stream": stream, "metric": metric, "diff": mean, "pairs": len(diffs), "p": p})
    return pd.DataFrame(rows, columns=["variant", "stream", "metric", "diff", "pairs", "p"])

"""Metrics from an accuracy matrix; the definitions are those of SPEC.md and docs/metrics.md.

``A[t][j]`` is the accuracy on experience j's test set after training through
step t (0-based here, 1-based in the docs). ``sizes[j]`` is the number of test
images of experience j, used where a metric is over the union of test sets.
"""
from __future__ import annotations

from typing import Optional, Sequence

#: metric name -> True when higher is better
HIGHER_IS_BETTER = {
    "last": True,
    "avg_inc": True,
    "avg_acc": True,
    "forgetting": False,
    "bwt": True,
    "fwt": True,
    "zs_retention": True,
}
METRICS = tuple(HIGHER_IS_BETTER)


def seen_accuracy(row: Sequence[float], sizes: Sequence[int], upto: int) -> float:
    """Sample-weighted accuracy over the test sets of experiences 0..upto."""
    n = sum(sizes[: upto + 1])
    return sum(row[j] * sizes[j] for j in range(upto + 1)) / n


def last(A, sizes) -> float:
    return seen_accuracy(A[-1], sizes, len(A) - 1)


def avg_inc(A, sizes) -> float:
    return sum(seen_accuracy(A[t], sizes, t) for t in range(len(A))) / len(A)


def avg_acc(A) -> float:
    return sum(A[-1]) / len(A[-1])


def forgetting(A) -> Optional[float]:
    T = len(A)
    if T < 2:
        return None
    return sum(max(A[l][j] for l in range(T - 1)) - A[T - 1][j] for j in range(T - 1)) / (T - 1)


def bwt(A) -> Optional[float]:
    T = len(A)
    if T < 2:
        return None
    return sum(A[T - 1][j] - A[j][j] for j in range(T - 1)) / (T - 1)


def fwt(A, initial: Optional[Sequence[float]]) -> Optional[float]:
    T = len(A)
    if T < 2 or initial is None:
        return None
    return sum(A[j - 1][j] - initial[j] for j in range(1, T)) / (T - 1)


def zs_retention(control_before: Optional[float], control_after: Optional[float]) -> Optional[float]:
    if control_before is None or control_after is None or control_before == 0:
        return None
    return control_after / control_before


def compute_metrics(A, sizes, initial=None, control_before=None, control_after=None) -> dict:
    """Every metric of SPEC.md; ``None`` where a metric is undefined (e.g. one step)."""
    T = len(A)
    if T == 0 or any(len(row) != T for row in A) or len(sizes) != T:
        raise ValueError("the accuracy matrix must be T x T with T test-set sizes")
    return {
        "last": last(A, sizes),
        "avg_inc": avg_inc(A, sizes),
        "avg_acc": avg_acc(A),
        "forgetting": forgetting(A),
        "bwt": bwt(A),
        "fwt": fwt(A, initial),
        "zs_retention": zs_retention(control_before, control_after),
    }

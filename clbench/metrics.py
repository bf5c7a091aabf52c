"""Metrics from an accuracy matrix; the definitions are those of SPEC.md and docs/metrics.md.

``A[t][j]`` is the accuracy on experience j's test set after training through
step t (0-based here, 1-based in the docs), a fraction in [0, 1]. Entries
above the diagonal (j > t: experiences not trained yet) may be ``None`` for
methods that cannot score classes they have not learned (e.g. iCaRL's
nearest-mean classifier); only ``fwt`` reads them, and it is then ``None``.
``sizes[j]`` is the number of test images of experience j, used where a metric
is over the union of test sets.
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
    "transfer": True,
    "mtil_avg": True,
    "mtil_last": True,
    "drift": False,
}
METRICS = tuple(HIGHER_IS_BETTER)

Matrix = Sequence[Sequence[Optional[float]]]


def seen_accuracy(row: Sequence[float], sizes: Sequence[int], upto: int) -> float:
    """Sample-weighted accuracy over the test sets of experiences 0..upto (a fraction)."""
    n = sum(sizes[: upto + 1])
    return sum(row[j] * sizes[j] for j in range(upto + 1)) / n


def last(A: Matrix, sizes) -> float:
    """Accuracy on the union of every test set after the last step."""
    return seen_accuracy(A[-1], sizes, len(A) - 1)


def avg_inc(A: Matrix, sizes) -> float:
    """Average incremental accuracy (Rebuffi et al. 2017): mean over t of the seen-data accuracy after step t."""
    return sum(seen_accuracy(A[t], sizes, t) for t in range(len(A))) / len(A)


def avg_acc(A: Matrix) -> float:
    """Mean over experiences of the final accuracy, each experience weighing the same."""
    return sum(A[-1]) / len(A[-1])


def forgetting(A: Matrix) -> Optional[float]:
    """Mean over j < T of max_{l = j..T} A[l][j] − A[T][j]; None for one step.

    Chaudhry et al. 2018 ("Riemannian Walk"), as Mammoth's utils/metrics.py
    computes it: the best accuracy experience j had from the step that trained
    it on, minus its final accuracy. Scores from before j was trained (other
    label spaces, zero-shot) never count, and the final row is in the max, so
    the value is never negative.
    """
    T = len(A)
    if T < 2:
        return None
    return sum(max(A[l][j] for l in range(j, T)) - A[T - 1][j] for j in range(T - 1)) / (T - 1)


def bwt(A: Matrix) -> Optional[float]:
    """Backward transfer (Lopez-Paz & Ranzato 2017): mean over j < T of A[T][j] − A[j][j]; None for one step."""
    T = len(A)
    if T < 2:
        return None
    return sum(A[T - 1][j] - A[j][j] for j in range(T - 1)) / (T - 1)


def fwt(A: Matrix, initial: Optional[Sequence[float]]) -> Optional[float]:
    """Forward transfer (Lopez-Paz & Ranzato 2017): mean over j ≥ 2 of A[j−1][j] − Z[j].

    None for one step, without the initial model's accuracies Z, or when the
    method could not score an experience before training on it (A[j−1][j] is None).
    """
    T = len(A)
    if T < 2 or initial is None or any(A[j - 1][j] is None for j in range(1, T)):
        return None
    return sum(A[j - 1][j] - initial[j] for j in range(1, T)) / (T - 1)


def zs_retention(control_before: Optional[float], control_after: Optional[float]) -> Optional[float]:
    """Control-set accuracy after the last step divided by before the first; None without a control set."""
    if control_before is None or control_after is None or control_before == 0:
        return None
    return control_after / control_before


def transfer(A: Matrix) -> Optional[float]:
    """MTIL's Transfer (Zheng et al. 2023): mean over j ≥ 1 of the mean of A[t][j] over t < j; None for one step.

    Each test set's accuracy before its own experience is trained (the upper triangle),
    averaged per test set, then over test sets, as ZSCL's evaluation (mtil/results.ipynb,
    ``statistics``) and RAIL's (``np.triu(table, k=1)`` column means) compute it. None when
    an entry above the diagonal is missing (a method that cannot score unseen classes).
    """
    T = len(A)
    if T < 2 or any(A[t][j] is None for j in range(1, T) for t in range(j)):
        return None
    return sum(sum(A[t][j] for t in range(j)) / j for j in range(1, T)) / (T - 1)


def mtil_avg(A: Matrix) -> Optional[float]:
    """MTIL's Avg (Zheng et al. 2023): mean over test sets of their mean accuracy over every step (all T rows).

    ZSCL's ``arr.mean(axis=0).mean()``. None when any entry is missing.
    """
    T = len(A)
    if any(A[t][j] is None for t in range(T) for j in range(T)):
        return None
    return sum(sum(A[t][j] for t in range(T)) / T for j in range(T)) / T


def mtil_last(A: Matrix) -> float:
    """MTIL's Last (Zheng et al. 2023): the unweighted mean of the final row (the same value as ``avg_acc``)."""
    return avg_acc(A)


def drift(S: Optional[Matrix]) -> Optional[float]:
    """Representation drift: mean over j < T of 1 − S[T][j]; None for one step or without S.

    ``S[t][j]`` is the mean cosine similarity between experience j's test-image
    features after step t and right after step j (drift.py), so the value is a
    mean cosine distance in [0, 2]: 0 when the old experiences' features did
    not move. The feature counterpart of ``forgetting`` (same j < T).
    """
    if not S or len(S) < 2:
        return None
    T = len(S)
    return sum(1 - S[T - 1][j] for j in range(T - 1)) / (T - 1)


def compute_metrics(A: Matrix, sizes, initial=None, control_before=None, control_after=None, drift_matrix=None) -> dict:
    """Every metric of SPEC.md; ``None`` where a metric is undefined (e.g. one step).

    ``drift_matrix``: the record's ``drift.since_learned`` (None: ``drift`` is None).

    Raises ValueError unless A is T × T with T test-set sizes and every entry on
    or below the diagonal is a number.
    """
    T = len(A)
    if T == 0 or any(len(row) != T for row in A) or len(sizes) != T:
        raise ValueError("the accuracy matrix must be T x T with T test-set sizes")
    if any(A[t][j] is None for t in range(T) for j in range(t + 1)):
        raise ValueError("the accuracy matrix needs every entry on and below the diagonal")
    return {
        "last": last(A, sizes),
        "avg_inc": avg_inc(A, sizes),
        "avg_acc": avg_acc(A),
        "forgetting": forgetting(A),
        "bwt": bwt(A),
        "fwt": fwt(A, initial),
        "zs_retention": zs_retention(control_before, control_after),
        "transfer": transfer(A),
        "mtil_avg": mtil_avg(A),
        "mtil_last": mtil_last(A),
        "drift": drift(drift_matrix),
    }

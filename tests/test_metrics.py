import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clbench.metrics import compute_metrics

# 3 steps, hand-made: A[t][j] after step t on experience j.
A = [
    [0.9, 0.2, 0.1],
    [0.6, 0.8, 0.3],
    [0.5, 0.7, 0.9],
]
SIZES = [10, 20, 30]
Z = [0.4, 0.1, 0.2]


def test_hand_computed_matrix():
    m = compute_metrics(A, SIZES, initial=Z, control_before=0.5, control_after=0.4)
    # last: (0.5*10 + 0.7*20 + 0.9*30) / 60 = 46/60
    assert m["last"] == pytest.approx(46 / 60)
    # avg_inc: t0: 0.9; t1: (6+16)/30; t2: 46/60
    assert m["avg_inc"] == pytest.approx((0.9 + 22 / 30 + 46 / 60) / 3)
    assert m["avg_acc"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    # forgetting: j0: max(0.9, 0.6) - 0.5 = 0.4; j1: max(0.2, 0.8) - 0.7 = 0.1
    assert m["forgetting"] == pytest.approx(0.25)
    # bwt: j0: 0.5 - 0.9; j1: 0.7 - 0.8
    assert m["bwt"] == pytest.approx(-0.25)
    # fwt: j1: A[0][1] - Z[1] = 0.1; j2: A[1][2] - Z[2] = 0.1
    assert m["fwt"] == pytest.approx(0.1)
    assert m["zs_retention"] == pytest.approx(0.8)


def mammoth_forgetting(A):
    """Mammoth's utils/metrics.py forgetting, transcribed independently: it only ever sees row t's first t+1
    entries (the experiences trained so far), pads the rows with zeros and maxes each column over every row."""
    T = len(A)
    rows = [list(A[t][: t + 1]) + [0.0] * (T - t - 1) for t in range(T)]
    best = [max(row[j] for row in rows) for j in range(T)]
    return sum(best[j] - rows[-1][j] for j in range(T - 1)) / (T - 1)


def test_forgetting_ignores_scores_from_before_an_experience_was_trained():
    # the example: experience 0 improves after step 1; the old max over l < T gave -0.10
    m = compute_metrics([[0.5, 0.1], [0.6, 0.8]], [1, 1])
    assert m["forgetting"] == pytest.approx(0.0)  # max(0.5, 0.6) - 0.6
    assert m["bwt"] == pytest.approx(0.1)
    # experience 1 scored 0.8 zero-shot at step 0, peaked at 0.5 once trained, ends at 0.2:
    # j0: max(.9, .4, .3) - .3 = .6; j1: max(.5, .2) - .2 = .3 -> 0.45 (a max over every l < T gave (.6 + .6) / 2 = 0.6)
    B = [[0.9, 0.8, 0.1], [0.4, 0.5, 0.2], [0.3, 0.2, 0.7]]
    assert compute_metrics(B, [1, 1, 1])["forgetting"] == pytest.approx(0.45)
    assert mammoth_forgetting(B) == pytest.approx(0.45)


def test_frozen_model_on_a_growing_label_space_has_no_forgetting_once_trained_columns_fall():
    # zero-shot on class-incremental: each column falls as distractor classes arrive; forgetting counts the
    # fall from the diagonal on (the drop caused by new classes), never the scores from before j existed
    A = [[0.9, 0.95, 0.97], [0.8, 0.9, 0.93], [0.7, 0.85, 0.9]]
    assert compute_metrics(A, [1, 1, 1])["forgetting"] == pytest.approx(((0.9 - 0.7) + (0.9 - 0.85)) / 2)


def test_one_step_leaves_sequence_metrics_undefined():
    m = compute_metrics([[0.7]], [5], initial=[0.2])
    assert m["last"] == m["avg_inc"] == m["avg_acc"] == pytest.approx(0.7)
    assert m["forgetting"] is None and m["bwt"] is None and m["fwt"] is None and m["zs_retention"] is None


def test_bad_matrix_shape_is_rejected():
    with pytest.raises(ValueError):
        compute_metrics([[0.1, 0.2]], [1, 1])


matrices = st.integers(1, 6).flatmap(
    lambda T: st.tuples(
        st.lists(st.lists(st.floats(0, 1), min_size=T, max_size=T), min_size=T, max_size=T),
        st.lists(st.integers(1, 100), min_size=T, max_size=T),
        st.lists(st.floats(0, 1), min_size=T, max_size=T),
    )
)


@settings(max_examples=200, deadline=None)
@given(matrices)
def test_bounds(data):
    A, sizes, Z = data
    m = compute_metrics(A, sizes, initial=Z)
    for key in ("last", "avg_inc", "avg_acc"):
        assert -1e-9 <= m[key] <= 1 + 1e-9
    if len(A) > 1:
        # the final row is in the max: never negative (Mammoth's definition)
        assert -1e-9 <= m["forgetting"] <= 1 + 1e-9
        assert m["forgetting"] == pytest.approx(mammoth_forgetting(A))
        assert -1 - 1e-9 <= m["bwt"] <= 1 + 1e-9
        assert -1 - 1e-9 <= m["fwt"] <= 1 + 1e-9
        # forgetting is at least -bwt: the max from step j on includes the diagonal
        assert m["forgetting"] >= -m["bwt"] - 1e-9


@settings(max_examples=200, deadline=None)
@given(matrices)
def test_bwt_is_minus_forgetting_when_every_max_is_on_the_diagonal(data):
    A, sizes, _ = data
    T = len(A)
    # make each column peak at its diagonal among the steps from j on
    A = [row[:] for row in A]
    for j in range(T - 1):
        A[j][j] = max(A[l][j] for l in range(j, T))
    m = compute_metrics(A, sizes)
    if T > 1:
        assert math.isclose(m["bwt"], -m["forgetting"], abs_tol=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.floats(0, 1))
def test_constant_matrix_has_no_forgetting(T, a):
    A = [[a] * T for _ in range(T)]
    m = compute_metrics(A, [3] * T, initial=[a] * T)
    assert m["last"] == pytest.approx(a) and m["avg_inc"] == pytest.approx(a)
    if T > 1:
        assert m["forgetting"] == pytest.approx(0) and m["bwt"] == pytest.approx(0) and m["fwt"] == pytest.approx(0)


def test_unscored_upcoming_experiences_leave_only_fwt_undefined():
    # a method that cannot score classes it has not learned stores None above the diagonal
    A = [[0.9, None, None], [0.6, 0.8, None], [0.5, 0.7, 0.9]]
    m = compute_metrics(A, SIZES, initial=Z)
    assert m["fwt"] is None
    assert m["forgetting"] == pytest.approx(0.25) and m["bwt"] == pytest.approx(-0.25)
    assert m["last"] == pytest.approx(46 / 60)
    with pytest.raises(ValueError):
        compute_metrics([[0.9, None], [None, 0.8]], [1, 1])

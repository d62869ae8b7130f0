"""Parity statistics against values computed by hand."""
import math

import numpy as np
import pytest

from edgecls import metrics
from edgecls.verification import tolerance_for


def test_mcnemar_exact_on_a_known_table():
    # b = 1 (reference right, candidate wrong), c = 9: p = 2 * P(X <= 1), X ~ Bin(10, 1/2)
    assert metrics.mcnemar_from_counts(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert metrics.mcnemar_from_counts(0, 0) == 1.0
    assert metrics.mcnemar_from_counts(5, 5) == 1.0
    ref = np.array([1, 1, 0, 0, 1, 1], bool)
    cand = np.array([1, 0, 1, 1, 1, 1], bool)  # b = 1, c = 2
    assert metrics.mcnemar_exact(ref, cand) == pytest.approx(1.0)  # 2 * (1 + 3) / 8 capped
    # 0 vs 6 discordant pairs: p = 2 / 64
    assert metrics.mcnemar_exact(np.ones(6, bool), np.zeros(6, bool)) == pytest.approx(2 / 64)


def test_bootstrap_ci_covers_the_point_estimate_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = rng.random(50) < 0.8
    large = rng.random(5000) < 0.8
    lo, hi = metrics.bootstrap_ci(small)
    assert lo <= small.mean() <= hi
    lo2, hi2 = metrics.bootstrap_ci(large)
    assert lo2 <= large.mean() <= hi2
    assert (hi2 - lo2) < (hi - lo) / 4
    # binomial standard error for n=5000, p=0.8 is 0.00566: the 95% interval is ~ +-1.96 se
    assert (hi2 - lo2) == pytest.approx(2 * 1.96 * math.sqrt(0.8 * 0.2 / 5000), rel=0.2)
    assert metrics.bootstrap_ci(np.ones(10)) == (1.0, 1.0)


def test_cosine_kl_and_topk_by_hand():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0]])
    assert metrics.cosine_similarity(a, b) == pytest.approx([0.0, 1.0])
    # KL between softmax([0, 0]) = (.5, .5) and softmax([log 3, 0]) = (.75, .25)
    kl = metrics.kl_divergence(np.array([[0.0, 0.0]]), np.array([[math.log(3), 0.0]]))
    assert kl[0] == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert metrics.kl_divergence(a, a) == pytest.approx([0.0, 0.0])
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert metrics.topk_hits(logits, np.array([2, 0]), 1).tolist() == [False, True]
    assert metrics.topk_hits(logits, np.array([2, 0]), 2).tolist() == [True, True]
    assert metrics.sqnr_db(np.array([3.0, 4.0]), np.array([3.0, 4.5])) == pytest.approx(20 * math.log10(5 / 0.5))


def test_max_drop_moves_the_verdict():
    """--max-drop replaces the top-1 drop allowed: a candidate wrong on 3% of 600 images
    (the reference always right) fails at the INT8 default of 1 point, passes at 10."""
    from edgecls import verdict
    labels = np.arange(600) % 10
    ref = np.eye(10)[labels] * 8.0
    cand = ref.copy()
    wrong = np.arange(600) % 33 == 0
    cand[wrong] = np.eye(10)[(labels[wrong] + 1) % 10] * 8.0
    groups = np.arange(600) // 6
    strict = verdict.verdict(ref, cand, tolerance_for("int8"), labels=labels, groups=groups)
    loose = verdict.verdict(ref, cand, tolerance_for("int8", max_drop=10), labels=labels,
                            groups=groups)
    drop = lambda v: next(c for c in v.criteria if c.name.startswith("top-1"))
    assert drop(strict).outcome == "fail" and drop(loose).outcome == "pass"



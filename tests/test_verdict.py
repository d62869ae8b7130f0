"""The three-outcome verdict (edgecls.verdict) against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgecls import verdict as v


def logits_for(probabilities):
    """Logits whose softmax is exactly `probabilities` (rows)."""
    return np.log(np.asarray(probabilities, np.float64))


def test_margin_is_top1_minus_top2_probability():
    ref = logits_for([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    assert v.margins(ref) == pytest.approx([0.5, 0.05])


def test_top5_overlap_counts_shared_classes():
    ref = np.array([[9, 8, 7, 6, 5, 4, 3.0]])       # top-5: 0..4
    cand = np.array([[9, 8, 7, 0, 0, 6, 5.0]])      # top-5: 0, 1, 2, 5, 6 -> 3 of 5 shared
    assert v.top5_overlap(ref, cand)[0] == pytest.approx(0.6)


def test_mean_per_class_accuracy_weights_classes_not_images():
    labels = np.array([0, 0, 0, 0, 1])
    logits = np.eye(2)[[0, 0, 0, 0, 0]]             # class 0: 4/4, class 1: 0/1
    assert v.mean_per_class_accuracy(logits, labels) == pytest.approx(0.5)


def test_cluster_bootstrap_resamples_whole_groups():
    """Two photos, ten views each, all views of one photo alike: the bootstrap by photo can
    only ever see 0, 0.5 or 1 - its interval spans [0, 1]; by view it would be narrow."""
    values = np.array([1.0] * 10 + [0.0] * 10)
    by_photo = v.ratio_ci(values, np.ones(20), v.group_ids(["a"] * 10 + ["b"] * 10, 20))
    by_view = v.ratio_ci(values, np.ones(20), v.group_ids(None, 20))
    assert by_photo == (0.0, 1.0)
    assert by_view[0] > 0.2 and by_view[1] < 0.8


def test_photo_shares_by_hand():
    """Four views of three photos: a holds KL 0.1 + 0.3 (share 0.4 of 1.0), c 0.6 alone,
    b nothing; the largest share first, with each photo's views, mean KL and agreement."""
    from edgecls.verdict import photo_shares
    kl = np.array([0.1, 0.3, 0.0, 0.6])
    agree = np.array([True, False, True, True])
    rows = photo_shares(kl, agree, ["p:a", "p:a", "p:b", "p:c"])
    assert [r["photo"] for r in rows] == ["p:c", "p:a", "p:b"]
    assert rows[0] == pytest.approx({"photo": "p:c", "images": 1, "kl_mean": 0.6,
                                     "kl_share": 0.6, "agreement": 1.0})
    assert rows[1] == pytest.approx({"photo": "p:a", "images": 2, "kl_mean": 0.2,
                                     "kl_share": 0.4, "agreement": 0.5})
    assert photo_shares(kl, agree, ["p:a", "p:a", "p:b", "p:c"], count=1) == rows[:1]
    assert photo_shares(np.zeros(2), agree[:2], ["x", "y"])[0]["kl_share"] == 0.0


def test_decide_three_ways():
    assert v.decide((0.991, 0.999), 0.99, True) == v.PASS
    assert v.decide((0.95, 0.985), 0.99, True) == v.FAIL
    assert v.decide((0.98, 0.995), 0.99, True) == v.INCONCLUSIVE
    assert v.decide((0.001, 0.004), 0.01, False) == v.PASS
    assert v.decide((0.02, 0.03), 0.01, False) == v.FAIL
    assert v.decide((math.nan, math.nan), 0.01, False) == v.INCONCLUSIVE


def test_images_to_decide_scales_with_the_square_of_the_interval():
    # half-width 0.02 at n=100, 0.01 from the tolerance: (0.02/0.01)^2 * 100 = 400
    assert v.images_to_decide(0.98, (0.96, 1.0), 0.99, 100) == 400
    assert v.images_to_decide(0.99, (0.97, 1.0), 0.99, 100) is None


def test_identical_outputs_pass_and_flipped_decisive_outputs_fail():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 10)) * 3
    same = v.verdict(ref, ref.copy(), v.TOLERANCES["fp16"], groups=np.arange(200) // 5)
    assert same.outcome == v.PASS and bool(same)
    broken = ref[:, ::-1].copy()                    # every answer changes
    bad = v.verdict(ref, broken, v.TOLERANCES["int8"], groups=np.arange(200) // 5)
    assert bad.outcome == v.FAIL and not bad
    assert any("agreement" in r for r in bad.reasons())


def test_disagreement_only_where_the_reference_is_unsure_does_not_fail():
    """Swapping the top two classes of near-ties changes plain agreement a lot but leaves
    decisive agreement whole, and KL small."""
    n = 300
    ref = np.zeros((n, 4))
    ref[:, 0] = 5.0                                 # decisive: margin ~0.95
    unsure = np.arange(n) % 3 == 0                  # a third near-ties: 0.501 vs 0.499
    ref[unsure] = np.log([0.501, 0.499, 1e-6, 1e-6])
    cand = ref.copy()
    cand[unsure] = np.log([0.499, 0.501, 1e-6, 1e-6])
    result = v.verdict(ref, cand, v.TOLERANCES["int8"], groups=np.arange(n) // 3)
    assert result.strata[0]["agreement"] == pytest.approx(2 / 3)
    assert result.strata[2]["agreement"] == 1.0
    assert result.outcome == v.PASS


def test_a_few_images_are_inconclusive_and_say_how_many_would_decide():
    """11 of 12 decisive answers kept, in 3 photos of 4 views: the interval straddles 99%."""
    ref = np.eye(10)[np.arange(12) % 10] * 8.0
    cand = ref.copy()
    cand[0] = np.eye(10)[5] * 8.0                   # one decisive answer changed
    result = v.verdict(ref, cand, v.Tolerances(0.99, max_kl=100.0), groups=np.arange(12) // 4)
    agreement = result.criteria[0]
    assert agreement.value == pytest.approx(11 / 12)
    assert agreement.ci[0] < 0.99 <= agreement.ci[1]
    assert agreement.outcome == v.INCONCLUSIVE and result.outcome == v.INCONCLUSIVE
    assert agreement.images_to_decide > 12
    assert "images would likely decide it" in result.reasons()[0]


def test_labelled_drop_is_non_inferiority():
    n = 400
    labels = np.arange(n) % 10
    ref = np.eye(10)[labels] * 8.0                  # the reference is always right
    cand = ref.copy()
    wrong = np.arange(n) % 20 == 0                  # the candidate is wrong on 5%: drop 5 pt
    cand[wrong] = np.eye(10)[(labels[wrong] + 1) % 10] * 8.0
    result = v.verdict(ref, cand, v.Tolerances(0.0, 10.0, 1.0), labels=labels,
                       groups=np.arange(n) // 4)
    drop = next(c for c in result.criteria if c.name.startswith("top-1 drop"))
    assert drop.value == pytest.approx(5.0)
    assert drop.outcome == v.FAIL and result.outcome == v.FAIL
    lenient = v.verdict(ref, cand, v.Tolerances(0.0, 10.0, 10.0), labels=labels,
                        groups=np.arange(n) // 4)
    assert next(c for c in lenient.criteria if c.name.startswith("top-1")).outcome == v.PASS


def test_no_decisive_input_leaves_the_verdict_to_the_distance():
    """A reference that is unsure everywhere (an untrained model): agreement on decisive
    inputs is measured on nothing, so it decides nothing; KL still does - a copy passes, a
    distorted copy fails. All criteria n/a would be no pass."""
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(40, 10)) * 0.01                  # margins of about 0.001
    assert (v.margins(ref) < v.DECISIVE).all()
    same = v.verdict(ref, ref.copy(), v.TOLERANCES["fp32"], groups=np.arange(40) // 4)
    assert same.criteria[0].outcome == v.NOT_APPLICABLE and same.criteria[0].n == 0
    assert same.outcome == v.PASS
    assert "n/a" in same.criteria[0].describe()
    far = v.verdict(ref, rng.normal(size=(40, 10)) * 3, v.TOLERANCES["fp32"],
                    groups=np.arange(40) // 4)
    assert far.outcome == v.FAIL and far.criteria[1].outcome == v.FAIL
    assert v.combine([v.NOT_APPLICABLE]) == v.INCONCLUSIVE


def test_exit_status_per_outcome_is_distinct():
    assert v.EXIT_STATUS == {v.PASS: 0, v.FAIL: 1, v.INCONCLUSIVE: 3}

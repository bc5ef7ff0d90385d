"""detlab.pipelines.stats against hand computations, brute force and scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from detlab.pipelines.stats import (
    combine_verdicts,
    describe,
    interval_verdict,
    paired_diff_ci,
    pooled_std,
    rank_verdict,
    rho_bootstrap_ci,
    seedwise_mean,
    spearman_exact,
)


def brute_force_p(x, y) -> float:
    """Two-sided exact p by scoring every permutation of y with scipy's spearmanr."""
    obs = abs(sps.spearmanr(x, y).statistic)
    perms = list(itertools.permutations(y))
    hits = sum(abs(sps.spearmanr(x, p).statistic) >= obs - 1e-12 for p in perms)
    return hits / len(perms)


def rank_corr(a, b, axis=-1):
    """Spearman rho along ``axis`` (vectorised, for scipy's permutation_test)."""
    ra, rb = sps.rankdata(a, axis=axis), sps.rankdata(b, axis=axis)
    ra, rb = ra - ra.mean(axis, keepdims=True), rb - rb.mean(axis, keepdims=True)
    return (ra * rb).sum(axis) / np.sqrt((ra**2).sum(axis) * (rb**2).sum(axis))


def test_four_monotone_points_have_exact_p_one_twelfth():
    rho, p = spearman_exact([0.3, 0.5, 0.7, 1.0], [0.10, 0.11, 0.15, 0.40])
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 24)
    rho, p = spearman_exact([1, 2, 3, 4], [4, 3, 2, 1])
    assert rho == pytest.approx(-1.0) and p == pytest.approx(1 / 12)
    # the asymptotic p that the report must not use: ~0 for the same data
    assert sps.spearmanr([1, 2, 3, 4], [1, 2, 3, 4]).pvalue < 1e-6


def test_small_case_matches_brute_force_and_scipy_permutation_test():
    x, y = [0.1, 0.4, 0.35, 0.8, 0.6, 0.9], [2.0, 1.0, 3.5, 3.0, 5.0, 4.0]
    rho, p = spearman_exact(x, y)
    assert rho == pytest.approx(sps.spearmanr(x, y).statistic)
    assert p == pytest.approx(brute_force_p(x, y))
    ref = sps.permutation_test(
        (x, y), rank_corr, permutation_type="pairings", n_resamples=np.inf, vectorized=True
    )
    assert p == pytest.approx(ref.pvalue)  # no ties: a symmetric null, same two-sided p
    assert 0.05 < p < 0.5


def test_ties_use_average_ranks():
    x, y = [1, 2, 2, 3, 4, 4], [1.0, 3.0, 2.0, 2.0, 5.0, 6.0]
    rho, p = spearman_exact(x, y)
    assert rho == pytest.approx(sps.spearmanr(x, y).statistic)
    assert p == pytest.approx(brute_force_p(x, y))


def test_constant_input_has_no_correlation():
    assert math.isnan(spearman_exact([1, 1, 1], [1, 2, 3])[0])
    assert spearman_exact([1, 2, 3], [5, 5, 5])[1] == 1.0
    assert spearman_exact([1], [2])[1] == 1.0


def test_monte_carlo_p_agrees_with_asymptotic_for_n12():
    rng = np.random.default_rng(3)
    x = rng.normal(size=12)
    y = 0.6 * x + rng.normal(size=12)
    rho, p = spearman_exact(x, y)
    ref = sps.spearmanr(x, y)
    assert rho == pytest.approx(ref.statistic) and 0.3 < abs(rho) < 0.8
    assert p == pytest.approx(ref.pvalue, abs=0.02)
    assert spearman_exact(x, y) == (rho, p)  # seeded: reproducible
    assert spearman_exact(x, y, seed=1)[1] != p  # but a real Monte-Carlo


def test_paired_ci_recovers_a_known_difference():
    n, sd = 30, 0.5
    rng = np.random.default_rng(0)
    offset = rng.normal(0, 2.0, size=n)  # per-seed effect shared by both arms
    a = {s: offset[s] + 1.0 + rng.normal(0, sd) for s in range(n)}
    b = {s: offset[s] for s in range(n)}
    ci = paired_diff_ci(a, b)
    assert ci["paired"] and ci["n_a"] == ci["n_b"] == n
    assert ci["lo"] < 1.0 < ci["hi"] and ci["lo"] > 0
    expected = 2 * 1.96 * sd / math.sqrt(n)
    assert abs((ci["hi"] - ci["lo"]) - expected) < 0.3 * expected
    assert ci["diff"] == pytest.approx(np.mean(list(a.values())) - np.mean(list(b.values())))


def test_pairing_removes_a_shared_seed_offset():
    rng = np.random.default_rng(1)
    offset = rng.normal(0, 5.0, size=20)
    a = {s: offset[s] + 0.5 + rng.normal(0, 0.1) for s in range(20)}
    b = {s: offset[s] for s in range(20)}
    paired = paired_diff_ci(a, b)
    unpaired = paired_diff_ci(a, {s + 100: v for s, v in b.items()})  # no shared seeds
    assert paired["paired"] and not unpaired["paired"]
    assert paired["diff"] == pytest.approx(unpaired["diff"])
    assert (paired["hi"] - paired["lo"]) < 0.05 * (unpaired["hi"] - unpaired["lo"])
    assert paired["lo"] > 0 and unpaired["lo"] < 0 < unpaired["hi"]


def test_partial_overlap_pairs_the_shared_seeds():
    ci = paired_diff_ci({0: 1.0, 1: 2.0, 2: 3.0}, {1: 1.5, 2: 2.0, 3: 9.0})
    assert ci["paired"] and ci["diff"] == pytest.approx((0.5 + 1.0) / 2)
    assert (ci["n_a"], ci["n_b"]) == (3, 3)


def test_fewer_than_two_values_cannot_say():
    for a, b in [({0: 1.0}, {0: 0.5, 1: 0.7}), ({0: 1.0}, {0: 0.5}), ({0: 1.0, 1: 2.0}, {})]:
        ci = paired_diff_ci(a, b)
        assert ci["lo"] == -math.inf and ci["hi"] == math.inf
    assert paired_diff_ci({0: 1.0}, {0: 0.5, 1: 0.7})["diff"] == pytest.approx(0.4)


def test_pooled_std_by_hand():
    # variances 1 (2 dof) and 2 (1 dof); the single value carries no dof
    assert pooled_std([[1, 2, 3], [4, 6], [5]]) == pytest.approx(math.sqrt((2 * 1 + 1 * 2) / 3))
    assert pooled_std([[1.0], [2.0]]) == 0.0 and pooled_std([]) == 0.0


def test_interval_verdicts():
    assert interval_verdict(0.1, 0.3) == "reproduced"
    assert interval_verdict(-0.3, -0.1) == "reversed"
    assert interval_verdict(-0.1, 0.3) == "inconclusive (the interval contains 0)"
    assert interval_verdict(0.0, 0.3).startswith("inconclusive")
    assert interval_verdict(-0.3, -0.1, expect_positive=False) == "reproduced"
    assert interval_verdict(-math.inf, math.inf).startswith("inconclusive")


def test_rho_bootstrap_ci():
    xs = [0.2, 0.5, 0.7, 1.0]
    separated = [[1.0, 1.01, 0.99], [2.0, 2.01, 1.99], [3.0, 3.02, 2.98], [4.0, 4.01, 3.99]]
    assert rho_bootstrap_ci(xs, separated) == pytest.approx((1.0, 1.0))
    rng = np.random.default_rng(0)
    noisy = [list(1.0 + 0.01 * i + rng.normal(0, 1.0, size=5)) for i in range(4)]
    lo, hi = rho_bootstrap_ci(xs, noisy)
    assert lo < 0 < hi
    assert rho_bootstrap_ci(xs, [[1.0], [2.0], [3.0], [4.0]]) == (-math.inf, math.inf)


def test_rank_verdict_needs_significance_and_an_interval_off_zero():
    assert rank_verdict(1.0, 1 / 12, 1.0, 1.0).startswith("inconclusive (p = 0.083")
    assert rank_verdict(0.9, 0.01, 0.5, 1.0) == "reproduced"
    assert rank_verdict(-0.9, 0.01, -1.0, -0.4) == "reversed"
    assert rank_verdict(0.9, 0.01, -0.2, 1.0).startswith("inconclusive")
    assert rank_verdict(float("nan"), 1.0, -math.inf, math.inf).startswith("inconclusive")


def test_small_helpers():
    assert combine_verdicts(["reproduced", "reproduced"]) == "reproduced"
    assert combine_verdicts(["reproduced", "reversed"]) == "reversed"
    assert combine_verdicts(["reproduced", "inconclusive (x)"]).startswith("inconclusive")
    assert combine_verdicts([]) == "not measured"
    d = describe({0: 1.0, 1: 3.0})
    assert (d["mean"], d["std"], d["n"]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert describe({0: 1.0})["std"] is None and describe({})["mean"] is None
    assert seedwise_mean([{0: 1.0, 1: 2.0}, {0: 3.0, 2: 5.0}]) == {0: 2.0}


def test_ladder_slope_known_small_cases():
    from detlab.pipelines.stats import ladder_slope

    # two seeds, three levels, y = x + a seed offset: only both identities and both reversals
    # reach |slope| 1 among the 6 x 6 within-seed permutations: p = 2 / 36
    f = ladder_slope([1, 2, 3], [{0: 1.0, 1: 5.0}, {0: 2.0, 1: 6.0}, {0: 3.0, 1: 7.0}])
    assert f["slope"] == pytest.approx(1.0) and f["p"] == pytest.approx(2 / 36)
    assert f["lo"] == pytest.approx(1.0) and f["hi"] == pytest.approx(1.0)  # no spread
    # per-seed slopes 1 and 3 (offsets cancel): mean 2, t CI 2 +- t(0.975, 1) * sqrt(2) / sqrt(2)
    f = ladder_slope([0, 1], [{0: 10.0, 1: -4.0}, {0: 11.0, 1: -1.0}])
    assert f["per_seed"] == {0: pytest.approx(1.0), 1: pytest.approx(3.0)}
    half = sps.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2)
    assert (f["lo"], f["hi"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert f["p"] == pytest.approx(2 / 4)  # 2 x 2 assignments; |mean| 2 at (1, 3), (-1, -3)


def test_ladder_slope_matches_brute_force_and_ignores_seed_offsets():
    from detlab.pipelines.stats import ladder_slope

    rng = np.random.default_rng(3)
    xs = [0.2, 0.5, 0.7, 1.0]
    y = rng.normal(size=(3, 4)) + np.array([[0.0], [5.0], [-2.0]])  # seeds with offsets
    values = [{s: float(y[s, i]) for s in range(3)} for i in range(4)]
    f = ladder_slope(xs, values)
    xc = np.array(xs) - np.mean(xs)
    slopes = [
        np.mean([(y[s][list(p)] - y[s].mean()) @ xc / (xc @ xc) for s, p in enumerate(ps)])
        for ps in itertools.product(itertools.permutations(range(4)), repeat=3)
    ]
    assert f["p"] == pytest.approx(np.mean(np.abs(slopes) >= abs(f["slope"]) - 1e-12))
    shifted = [{s: v + 100.0 * s for s, v in d.items()} for d in values]
    assert ladder_slope(xs, shifted)["slope"] == pytest.approx(f["slope"])
    one = ladder_slope(xs, [{0: v[0]} for v in values])
    assert one["lo"] == -math.inf and one["hi"] == math.inf  # one seed: no interval
    missing = ladder_slope(xs, [values[0], values[1], values[2], {0: 1.0}])
    assert missing["n_seeds"] == 1  # only seeds present at every level count

"""Small-sample statistics for the study report: exact rank tests and bootstrap intervals.

The studies have few mask sources (4-5) and few seeds (2-5), so asymptotic formulas are
wrong here: scipy's Spearman p for four perfectly ordered points is ~0, while the exact
permutation p is 2/4! = 0.083. Every function is pure (numpy/scipy only, seeded RNG) so the
report is reproducible byte for byte.

- :func:`spearman_exact`: rank correlation with an exact (n <= 9) or Monte-Carlo p.
- :func:`paired_diff_ci`: bootstrap CI of a difference of means, paired by seed when
  possible; infinite ("cannot say") with fewer than two values on a side.
- :func:`pooled_std`: the seed-to-seed noise pooled over groups.
- :func:`interval_verdict`: reproduced / reversed / inconclusive from a CI.
- :func:`rho_bootstrap_ci`: CI of a Spearman rho when each x has several seed values.
- :func:`rank_verdict`, :func:`combine_verdicts`: verdicts from a rank test / several CIs.
- :func:`describe`, :func:`seedwise_mean`: mean ± sample std (n) and per-seed averages.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
from scipy.stats import rankdata

EXACT_MAX_N = 9  # 9! = 362880 permutations: enumerated; above this, Monte-Carlo
MC_PERMUTATIONS = 100_000
_CHUNK = 20_000  # permutations scored per vectorised batch (bounds the memory)
_TOL = 1e-12


@lru_cache(maxsize=EXACT_MAX_N + 1)
def _all_permutations(n: int) -> np.ndarray:
    """Every permutation of ``range(n)`` as an (n!, n) index array (cached)."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int16).reshape(-1, n)


def _centred_ranks(v: np.ndarray) -> np.ndarray:
    r = rankdata(v)  # average ranks for ties
    return r - r.mean()


def spearman_exact(x, y, n_mc: int = MC_PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """Spearman rho of ``x`` and ``y`` (average ranks for ties) with a two-sided
    permutation p.

    The p is the fraction of permutations of ``y`` whose |rho| is at least the observed
    |rho| (minus 1e-12 for rounding), the identity included: all n! permutations for
    n <= 9, else ``n_mc`` seeded random permutations, p = (1 + hits) / (1 + n_mc).
    Returns (nan, 1.0) when either input is constant (rho undefined) or n < 2.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got {x.shape} and {y.shape}")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), 1.0
    rx, ry = _centred_ranks(x), _centred_ranks(y)
    norm = np.sqrt((rx @ rx) * (ry @ ry))
    rho = float(rx @ ry / norm)
    threshold = abs(rho) - _TOL
    n = len(x)
    if n <= EXACT_MAX_N:
        perms = _all_permutations(n)
        hits = sum(
            int((np.abs(ry[perms[i : i + _CHUNK]] @ rx / norm) >= threshold).sum())
            for i in range(0, len(perms), _CHUNK)
        )
        return rho, hits / len(perms)
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_mc, _CHUNK):
        batch = rng.permuted(np.tile(ry, (min(_CHUNK, n_mc - start), 1)), axis=1)
        hits += int((np.abs(batch @ rx / norm) >= threshold).sum())
    return rho, (1 + hits) / (1 + n_mc)


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("-inf"), float("inf")
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``values``."""
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def paired_diff_ci(
    a: dict[int, float],
    b: dict[int, float],
    level: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict:
    """Percentile-bootstrap CI of mean(a) - mean(b); ``a``/``b`` map seed -> value.

    Paired when the two share at least two seeds: the differences a[s] - b[s] over the
    shared seeds are resampled (a seed-level offset common to both cancels), and ``diff``
    is their mean. Otherwise each side is resampled on its own (unpaired) and ``diff`` is
    mean(a) - mean(b). With fewer than two values on a side the spread is unknown: lo=-inf,
    hi=+inf. Returns dict(diff, lo, hi, paired, n_a, n_b).
    """
    out = {"n_a": len(a), "n_b": len(b), "paired": False}
    if not a or not b:
        return {**out, "diff": float("nan"), "lo": float("-inf"), "hi": float("inf")}
    rng = np.random.default_rng(seed)
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        d = np.array([a[s] - b[s] for s in shared], dtype=float)
        lo, hi = _percentile_ci(_boot_means(d, n_boot, rng), level)
        return {**out, "diff": float(d.mean()), "lo": lo, "hi": hi, "paired": True}
    va, vb = np.array(list(a.values()), float), np.array(list(b.values()), float)
    diff = float(va.mean() - vb.mean())
    if len(va) < 2 or len(vb) < 2:
        return {**out, "diff": diff, "lo": float("-inf"), "hi": float("inf")}
    boot = _boot_means(va, n_boot, rng) - _boot_means(vb, n_boot, rng)
    lo, hi = _percentile_ci(boot, level)
    return {**out, "diff": diff, "lo": lo, "hi": hi}


def pooled_std(groups: list[list[float]]) -> float:
    """sqrt(sum_g (n_g - 1) var_g / sum_g (n_g - 1)) over the groups with >= 2 values
    (var_g the sample variance); 0.0 when no group has two values."""
    used = [np.asarray(g, dtype=float) for g in groups if len(g) >= 2]
    dof = sum(len(g) - 1 for g in used)
    if dof == 0:
        return 0.0
    return float(np.sqrt(sum((len(g) - 1) * g.var(ddof=1) for g in used) / dof))


def interval_verdict(lo: float, hi: float, expect_positive: bool = True) -> str:
    """'reproduced' when the CI lies entirely on the expected side of 0, 'reversed' when
    entirely on the other side, else 'inconclusive (the interval contains 0)'."""
    if lo > 0 or hi < 0:  # NaN bounds compare False: inconclusive
        return "reproduced" if (lo > 0) == expect_positive else "reversed"
    return "inconclusive (the interval contains 0)"


def _rowwise_rho(rx: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman rho of fixed centred ranks ``rx`` with each row of ``ys`` (nan if constant)."""
    ry = rankdata(ys, axis=1)
    ry = ry - ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx @ rx) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, ry @ rx / np.where(denom > 0, denom, 1.0), np.nan)


def rho_bootstrap_ci(
    xs: list[float],
    per_x_values: list[list[float]],
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of Spearman rho(x, mean of y) under seed noise: each bootstrap draw
    resamples (with replacement) every x's seed values and ranks the resampled means.

    Returns (-inf, inf) when any x has fewer than two values (its noise is unknown), when
    there are fewer than two xs, or x is constant. Draws where the means tie completely
    (rho undefined) are dropped.
    """
    if len(xs) != len(per_x_values):
        raise ValueError("xs and per_x_values must have the same length")
    if len(xs) < 2 or np.ptp(xs) == 0 or any(len(v) < 2 for v in per_x_values):
        return float("-inf"), float("inf")
    rng = np.random.default_rng(seed)
    means = np.column_stack(
        [_boot_means(np.asarray(v, dtype=float), n_boot, rng) for v in per_x_values]
    )
    return _percentile_ci(_rowwise_rho(_centred_ranks(np.asarray(xs, float)), means), level)


def rank_verdict(rho: float, p: float, lo: float, hi: float, alpha: float = 0.05) -> str:
    """A rank correlation counts only when significant (p < alpha) AND its bootstrap CI
    [lo, hi] excludes 0; otherwise it is inconclusive, whatever rho is."""
    if not p < alpha:
        return f"inconclusive (p = {p:.3f} ≥ {alpha})"
    if not (lo > 0 or hi < 0):
        return "inconclusive (the CI of rho contains 0)"
    return "reproduced" if rho > 0 else "reversed"


def combine_verdicts(verdicts: list[str]) -> str:
    """'reproduced' when every verdict is, 'reversed' when any is, else inconclusive."""
    if not verdicts:
        return "not measured"
    if "reversed" in verdicts:
        return "reversed"
    if set(verdicts) == {"reproduced"}:
        return "reproduced"
    return "inconclusive (an interval contains 0)"


def describe(values: dict[int, float]) -> dict:
    """seed -> value as dict(mean, std (sample, None below 2 values), n, values)."""
    arr = np.array(list(values.values()), dtype=float)
    mean = float(arr.mean()) if arr.size else None
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return {"mean": mean, "std": std, "n": int(arr.size), "values": values}


def seedwise_mean(groups: list[dict[int, float]]) -> dict[int, float]:
    """Per seed, the mean over ``groups`` (seed -> value each), for the seeds all share."""
    shared = set.intersection(*(set(g) for g in groups)) if groups else set()
    return {s: float(np.mean([g[s] for g in groups])) for s in sorted(shared)}


def _level_permutation_slopes(yc: np.ndarray, xc: np.ndarray, sxx: float) -> np.ndarray:
    """Per seed (row of ``yc``), the slope under every permutation of its levels: [S, L!]."""
    perms = _all_permutations(yc.shape[1])
    return np.stack([row[perms] @ xc / sxx for row in yc])


def ladder_slope(
    xs: list[float],
    values: list[dict[int, float]],
    level: float = 0.95,
    n_mc: int = MC_PERMUTATIONS,
    seed: int = 0,
) -> dict:
    """Slope of y on x across the levels of a ladder, seed effects removed.

    ``xs[i]`` is level i's x (e.g. its ABO, or log2 of its region count), ``values[i]``
    maps seed -> y. Only seeds present at every level count. Each seed's least-squares
    slope over the levels is computed (its own offset removed); ``slope`` is their mean
    (the pooled within-seed slope, as the xs are shared). CI: Student t over the per-seed
    slopes (none below two seeds). p: exact two-sided permutation test of "the level does
    not matter", permuting each seed's values across the levels independently, all
    (L!)^S assignments when that is at most ~2e6, else ``n_mc`` random ones
    (p = (1 + hits) / (1 + n_mc)); a hit is |mean slope| >= the observed |mean slope|.
    Returns dict(slope, lo, hi, p, per_seed, n_seeds, n_levels, exact).
    """
    from scipy.stats import t as student_t

    x = np.asarray(xs, dtype=float)
    seeds = sorted(set.intersection(*(set(v) for v in values))) if values else []
    out = dict(n_seeds=len(seeds), n_levels=len(x), exact=True)
    if len(x) < 2 or np.ptp(x) == 0 or not seeds:
        return out | dict(slope=float("nan"), lo=float("-inf"), hi=float("inf"), p=1.0,
                          per_seed={})  # fmt: skip
    y = np.array([[v[s] for v in values] for s in seeds], dtype=float)  # [S, L]
    xc = x - x.mean()
    sxx = float(xc @ xc)
    yc = y - y.mean(axis=1, keepdims=True)
    per_seed = yc @ xc / sxx  # [S]
    slope = float(per_seed.mean())
    if len(seeds) >= 2:
        half = student_t.ppf(0.5 + level / 2, len(seeds) - 1) * per_seed.std(ddof=1)
        lo, hi = slope - half / np.sqrt(len(seeds)), slope + half / np.sqrt(len(seeds))
    else:
        lo, hi = float("-inf"), float("inf")
    threshold = abs(slope) - _TOL
    perm = _level_permutation_slopes(yc, xc, sxx)  # [S, L!]
    if perm.shape[1] ** len(seeds) <= 2_000_000:
        totals = perm[0]
        for row in perm[1:]:
            totals = (totals[:, None] + row[None, :]).ravel()
        p = float(np.mean(np.abs(totals / len(seeds)) >= threshold))
    else:
        rng = np.random.default_rng(seed)
        draws = perm[
            np.arange(len(seeds))[:, None], rng.integers(0, perm.shape[1], (len(seeds), n_mc))
        ]
        p = float((1 + np.sum(np.abs(draws.mean(0)) >= threshold)) / (1 + n_mc))
        out["exact"] = False
    seeds_slopes = {s: float(b) for s, b in zip(seeds, per_seed, strict=True)}
    return out | dict(slope=slope, lo=float(lo), hi=float(hi), p=p, per_seed=seeds_slopes)

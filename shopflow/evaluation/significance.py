"""Is a difference between two systems real? Paired statistics over the same queries.

Every comparison shopflow makes is paired: both systems answer the same test queries, so the
per-query differences carry the signal and the query-to-query variance cancels. And every
one resamples independent units: a search query is one; the purchases of one customer are
not, so recommendation rows are resampled by customer (`PairedDifferences`). Used here:

- a paired bootstrap confidence interval of the mean difference (scipy's BCa bootstrap over
  clusters);
- a paired permutation test (random sign flips of whole clusters; scipy's
  `permutation_test`), one-sided toward the alternative that matters to the caller;
- a non-inferiority test: is the challenger worse by more than a margin? (the same test on
  differences shifted by the margin);
- the sample size a classic A/B test on click-through rate would need (statsmodels' power
  analysis for two proportions);
- `paired_test`: the paired t-test (the IR default) and Wilcoxon signed-rank, both two-sided,
  that the model stages report against the baselines.

Everything is seeded, so a night's decision is reproducible to the last digit.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

Alternative = Literal["greater", "less", "two-sided"]
Clusters = ArrayLike | None  # a cluster label per row (a customer, an invoice); None: each row


class PairedDifferences:
    """Row differences a - b summed per independent unit (cluster).

    Rows of one cluster are not independent: the purchases of one invoice share one history
    and one recommendation list, so they hit or miss together. Resampling rows as if
    independent makes a 168-invoice test look like a 3,525-purchase one. Every statistic
    here resamples clusters and keeps the row-level estimand: the mean difference over rows,
    sum of the differences / number of rows (Field & Welsh 2007, the cluster bootstrap;
    the sign-flip test flips a whole cluster's rows together). Without clusters each row is
    its own cluster and these are the usual paired tests.
    """

    def __init__(self, a: ArrayLike, b: ArrayLike, clusters: Clusters = None) -> None:
        first, second = np.asarray(a, float), np.asarray(b, float)
        if first.shape != second.shape or first.ndim != 1:
            raise ValueError(
                f"paired runs must be equally long, got {first.shape} and {second.shape}"
            )
        if len(first) < 2:
            raise ValueError("a paired comparison needs at least 2 queries")
        diff = first - second
        if clusters is None:
            self.sums, self.sizes = diff, np.ones(len(diff))
        else:
            labels = np.asarray(clusters)
            if labels.shape != diff.shape:
                raise ValueError(f"{len(labels)} cluster labels for {len(diff)} paired rows")
            _, index = np.unique(labels, return_inverse=True)
            self.sums = np.bincount(index, weights=diff)
            self.sizes = np.bincount(index).astype(float)
        self.rows = len(diff)
        self.mean = float(diff.mean())
        self.constant = bool(np.ptp(diff) == 0)

    @property
    def clusters(self) -> int:
        return len(self.sums)


def bootstrap_ci(
    a: ArrayLike,
    b: ArrayLike,
    *,
    clusters: Clusters = None,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Confidence interval of mean(a - b) by the paired (BCa) bootstrap over clusters."""
    from scipy import stats

    paired = PairedDifferences(a, b, clusters)
    if paired.constant:  # every row moved by the same amount: no sampling spread
        return paired.mean, paired.mean
    if paired.clusters < 2:
        return -math.inf, math.inf

    def ratio(sums: np.ndarray, sizes: np.ndarray, axis: int = -1) -> np.ndarray:
        return sums.sum(axis=axis) / sizes.sum(axis=axis)

    def interval(method: str) -> tuple[float, float]:
        result = stats.bootstrap(
            (paired.sums, paired.sizes),
            ratio,
            paired=True,
            n_resamples=resamples,
            confidence_level=confidence,
            method=method,
            random_state=np.random.default_rng(seed),
            vectorized=True,
        )
        return result.confidence_interval

    low, high = interval("BCa")
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerates on very skewed data
        low, high = interval("percentile")
    return float(low), float(high)


def permutation_p(
    a: ArrayLike,
    b: ArrayLike,
    *,
    clusters: Clusters = None,
    alternative: Alternative = "greater",
    shift: float = 0.0,
    resamples: int = 10_000,
    seed: int = 0,
) -> float:
    """p-value of the paired permutation (sign-flip) test of mean(a - b + shift) vs 0, each
    cluster's rows flipped together.

    `alternative="greater"`: evidence that a beats b. With `shift` = a margin and
    `alternative="less"`, it tests whether a is worse than b by more than the margin.
    Exact (all 2^n sign patterns) when the clusters are few, Monte Carlo otherwise.
    """
    from scipy import stats

    paired = PairedDifferences(a, b, clusters)
    shifted = paired.sums + shift * paired.sizes
    if not shifted.any():
        return 1.0
    rows = paired.rows
    result = stats.permutation_test(
        (shifted,),
        lambda d, axis: np.sum(d, axis=axis) / rows,
        permutation_type="samples",
        alternative=alternative,
        n_resamples=resamples,
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def compare(
    a: ArrayLike,
    b: ArrayLike,
    *,
    clusters: Clusters = None,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Means, difference, its interval and the one-sided p-value that a beats b, resampling
    `clusters` (independent units) when given; `n` rows in `clusters` units."""
    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    paired = PairedDifferences(a_arr, b_arr, clusters)
    low, high = bootstrap_ci(
        a_arr, b_arr, clusters=clusters, confidence=confidence, resamples=resamples, seed=seed
    )
    return {
        "challenger": float(a_arr.mean()),
        "champion": float(b_arr.mean()),
        "difference": paired.mean,
        "ci_low": low,
        "ci_high": high,
        "p_value": permutation_p(a_arr, b_arr, clusters=clusters, resamples=resamples, seed=seed),
        "p_wilcoxon_two_sided": wilcoxon_p(a_arr, b_arr) if clusters is None else math.nan,
        "n": paired.rows,
        "clusters": paired.clusters,
    }


def paired_test(a: ArrayLike, b: ArrayLike) -> dict[str, float]:
    """Is system a better than b over the same queries? Paired t-test and Wilcoxon signed-rank.

    The t-test is the IR default (ranx, trec_eval studies); Wilcoxon is reported alongside
    because per-query metric differences are far from normal. Both p-values are two-sided.
    """
    from scipy import stats

    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    if not PairedDifferences(a_arr, b_arr).sums.any():
        return {
            "mean_a": float(a_arr.mean()),
            "mean_b": float(b_arr.mean()),
            "mean_diff": 0.0,
            "p_ttest": 1.0,
            "p_wilcoxon": 1.0,
            "n": len(a_arr),
        }
    return {
        "mean_a": round(float(a_arr.mean()), 4),
        "mean_b": round(float(b_arr.mean()), 4),
        "mean_diff": round(float((a_arr - b_arr).mean()), 4),
        "p_ttest": float(stats.ttest_rel(a_arr, b_arr).pvalue),
        "p_wilcoxon": wilcoxon_p(a_arr, b_arr),
        "n": len(a_arr),
    }


def wilcoxon_p(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired runs (1.0 when they never differ)."""
    from scipy import stats

    if not PairedDifferences(a, b).sums.any():
        return 1.0
    return float(stats.wilcoxon(np.asarray(a, float), np.asarray(b, float)).pvalue)


def worse_by_more_than(
    a: ArrayLike,
    b: ArrayLike,
    margin: float,
    *,
    clusters: Clusters = None,
    resamples: int = 10_000,
    seed: int = 0,
) -> float:
    """One-sided p-value that a is worse than b by more than `margin` (mean(a - b) < -margin),
    clusters flipped together."""
    return permutation_p(
        a,
        b,
        clusters=clusters,
        alternative="less",
        shift=margin,
        resamples=resamples,
        seed=seed,
    )


def sessions_per_arm(
    ctr_a: float, ctr_b: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Sessions each arm of a two-sided A/B test on CTR needs to detect ctr_a vs ctr_b.

    Cohen's h effect size and the normal approximation (statsmodels); infinite when the two
    click-through rates are equal.
    """
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    if not (0 < ctr_a < 1 and 0 < ctr_b < 1) or math.isclose(ctr_a, ctr_b, abs_tol=1e-12):
        return math.inf
    effect = abs(proportion_effectsize(ctr_a, ctr_b))
    n = NormalIndPower().solve_power(effect, alpha=alpha, power=power, alternative="two-sided")
    return float(math.ceil(n))

"""The statistics behind the gate, checked on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from shopflow.evaluation import significance

pytestmark = pytest.mark.unit


@pytest.fixture
def scores() -> np.ndarray:
    return np.random.default_rng(1).beta(2, 2, 300)


def test_identical_systems_show_no_difference(scores):
    result = significance.compare(scores, scores.copy(), seed=3)
    assert result["difference"] == 0.0
    assert (result["ci_low"], result["ci_high"]) == (0.0, 0.0)
    assert result["p_value"] == 1.0 and result["p_wilcoxon_two_sided"] == 1.0


def test_a_planted_difference_is_detected_and_its_interval_covers_it(scores):
    noise = np.random.default_rng(2).normal(0, 0.05, len(scores))
    better = scores + 0.03 + noise
    result = significance.compare(better, scores, seed=3)
    assert result["p_value"] < 0.001
    assert result["ci_low"] > 0 and result["ci_low"] < 0.03 < result["ci_high"]
    # the opposite direction is not evidence of improvement
    assert significance.compare(scores, better, seed=3)["p_value"] > 0.99


def test_pure_noise_is_not_called_significant(scores):
    noisy = scores + np.random.default_rng(5).normal(0, 0.05, len(scores))
    result = significance.compare(noisy, scores, seed=3)
    assert result["p_value"] > 0.05 and result["ci_low"] < 0 < result["ci_high"]


def test_results_are_reproducible_with_the_seed_and_vary_without_it(scores):
    other = scores + np.random.default_rng(7).normal(0.01, 0.05, len(scores))
    assert significance.compare(other, scores, seed=11) == significance.compare(
        other, scores, seed=11
    )
    assert significance.bootstrap_ci(other, scores, seed=1) != significance.bootstrap_ci(
        other, scores, seed=2
    )


def test_permutation_p_matches_an_exact_enumeration_on_a_small_case():
    diff = np.array([0.3, 0.1, -0.05, 0.2, 0.15, 0.05])
    signs = np.array(np.meshgrid(*[[-1, 1]] * len(diff))).reshape(len(diff), -1).T
    null = (signs * diff).mean(axis=1)
    exact = float(np.mean(null >= diff.mean() - 1e-12))
    p = significance.permutation_p(diff, np.zeros_like(diff), alternative="greater")
    assert p == pytest.approx(exact)


def test_non_inferiority_separates_a_small_loss_from_a_large_one(scores):
    noise = np.random.default_rng(3).normal(0, 0.03, len(scores))
    slightly_worse = scores - 0.005 + noise
    much_worse = scores - 0.08 + noise
    assert significance.worse_by_more_than(slightly_worse, scores, 0.02) > 0.5
    assert significance.worse_by_more_than(much_worse, scores, 0.02) < 0.001


def test_sessions_per_arm_matches_the_textbook_formula():
    p1, p2 = 0.10, 0.12
    pooled = (p1 + p2) / 2
    z_alpha, z_beta = stats.norm.ppf(1 - 0.05 / 2), stats.norm.ppf(0.8)
    classic = (
        z_alpha * math.sqrt(2 * pooled * (1 - pooled))
        + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    ) ** 2 / (p1 - p2) ** 2  # about 3,840 sessions per arm
    assert significance.sessions_per_arm(p1, p2) == pytest.approx(classic, rel=0.01)
    assert math.isinf(significance.sessions_per_arm(0.3, 0.3))


def test_paired_runs_must_have_the_same_length():
    with pytest.raises(ValueError, match="equally long"):
        significance.compare([0.1, 0.2, 0.3], [0.1, 0.2])


def test_correlated_rows_make_the_row_level_test_wrong_and_the_cluster_test_right():
    """40 customers with 20 purchases each; every purchase of a customer shares one list, so
    the customer's rows move together. Under no true difference, the row-level test calls
    far more than 5% of such experiments significant; the cluster-level test does not."""
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(40), 20)
    row_level, cluster_level = [], []
    for _ in range(200):
        effect = np.repeat(rng.normal(0, 0.1, 40), 20)  # per customer, mean 0: no real gain
        noise = rng.normal(0, 0.01, len(clusters))
        a, b = 0.5 + effect + noise, np.full(len(clusters), 0.5)
        row_level.append(significance.permutation_p(a, b, resamples=500, seed=1))
        cluster_level.append(
            significance.permutation_p(a, b, clusters=clusters, resamples=500, seed=1)
        )
    assert np.mean(np.array(row_level) < 0.05) > 0.3  # the planted trap: wrong
    assert np.mean(np.array(cluster_level) < 0.05) < 0.09  # about alpha: right


def test_the_cluster_test_is_the_test_on_cluster_sums_and_the_interval_widens():
    rng = np.random.default_rng(4)
    clusters = np.repeat(np.arange(30), 10)
    per_cluster = rng.normal(0.02, 0.1, 30)
    a = np.repeat(per_cluster, 10) + rng.normal(0, 0.01, 300)
    b = np.zeros(300)
    sums = np.bincount(clusters, weights=a - b)
    assert significance.permutation_p(a, b, clusters=clusters, seed=3) == pytest.approx(
        significance.permutation_p(sums / 10, np.zeros(30), seed=3)
    )
    rows = significance.bootstrap_ci(a, b, seed=3)
    grouped = significance.bootstrap_ci(a, b, clusters=clusters, seed=3)
    assert grouped[1] - grouped[0] > 2 * (rows[1] - rows[0])
    result = significance.compare(a, b, clusters=clusters, seed=3)
    assert result["n"] == 300 and result["clusters"] == 30
    assert result["difference"] == pytest.approx(float((a - b).mean()))
    with pytest.raises(ValueError, match="cluster labels"):
        significance.compare(a, b, clusters=clusters[:10])

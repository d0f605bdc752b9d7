import numpy as np
import pandas as pd
import pytest

from shopflow.core.errors import StageInputError
from shopflow.models.propensity import click_weights, estimate_propensities

pytestmark = pytest.mark.unit


def simulated_log(theta: np.ndarray, n_lists: int = 6000, seed: int = 0) -> pd.DataFrame:
    """Position-based clicks: 30 queries x 12 products, shown 10 at a time in shuffled orders."""
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.05, 0.9, size=(30, 12))
    rows = []
    for _ in range(n_lists):
        q = rng.integers(30)
        shown = rng.permutation(12)[:10]
        for position, d in enumerate(shown, start=1):
            click = rng.random() < theta[position - 1] * gamma[q, d]
            rows.append((f"q{q}", f"p{d}", position, click))
    return pd.DataFrame(rows, columns=["query", "product_id", "position", "clicked"])


def test_em_recovers_the_examination_curve_of_a_position_based_model():
    theta = 0.9 / np.arange(1, 11) ** 0.8
    estimate = estimate_propensities(simulated_log(theta), max_position=10)
    assert estimate.loc[1] == 1.0
    np.testing.assert_allclose(estimate.to_numpy(), theta / theta[0], atol=0.04)


def test_weights_undo_the_bias_and_are_clipped():
    propensity = pd.Series([1.0, 0.5, 0.01], index=pd.RangeIndex(1, 4))
    np.testing.assert_allclose(
        click_weights(np.array([1, 2, 3, 9]), propensity, clip=0.05), [1.0, 2.0, 20.0, 20.0]
    )


def test_logs_that_cannot_identify_the_bias_fail_clearly():
    one_position = pd.DataFrame(
        {
            "query": ["q"] * 4,
            "product_id": ["a", "b", "a", "b"],
            "position": [1, 2, 1, 2],
            "clicked": [True, False, False, False],
        }
    )
    with pytest.raises(StageInputError, match="two different positions"):
        estimate_propensities(one_position)
    with pytest.raises(StageInputError, match="no clicks"):
        estimate_propensities(one_position.assign(clicked=False))
    with pytest.raises(StageInputError, match="lacks columns"):
        estimate_propensities(one_position.drop(columns="position"))

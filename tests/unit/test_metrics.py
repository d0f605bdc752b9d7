import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from shopflow.evaluation import ranking as metrics

pytestmark = pytest.mark.unit


def test_ndcg_matches_scikit_learn_on_untied_scores():
    rng = np.random.default_rng(0)
    for _ in range(20):
        grades = rng.integers(0, 4, 30).astype(float)
        scores = rng.permutation(30).astype(float)  # no ties
        order = np.argsort(-scores)
        ours = metrics.ndcg_at_k(grades[order], grades, 10)
        theirs = ndcg_score(grades[None, :], scores[None, :], k=10)
        assert ours == pytest.approx(theirs, abs=1e-12)


def test_per_query_metrics_by_hand():
    qrels = {"q": {"a": 3, "b": 0, "c": 2}, "missing": {"x": 1}}
    frame = metrics.per_query(qrels, {"q": ["b", "a", "z", "c"]}, relevant_at=1).set_index("query")
    assert frame.loc["q", "mrr@10"] == 0.5
    assert frame.loc["q", "recall@100"] == 1.0
    assert frame.loc["q", "map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    dcg = 3 / np.log2(3) + 2 / np.log2(5)
    idcg = 3 + 2 / np.log2(3)
    assert frame.loc["q", "ndcg@10"] == pytest.approx(dcg / idcg)
    assert frame.loc["missing"].drop("query", errors="ignore").eq(0).all()


def test_next_item():
    frame = metrics.next_item(["a", "b"], [["x", "a"], ["y"]], k=10)
    assert frame["hit@10"].tolist() == [1.0, 0.0]
    assert frame["ndcg@10"].tolist() == pytest.approx([1 / np.log2(3), 0.0])


def test_judged_only_ranks_the_judged_products_with_gains_from_the_lowest_grade():
    qrels = {"q": {"a": 3.0, "b": 1.0, "c": 2.0}}  # a 1..3 scale: 1 is "irrelevant"
    run = {"q": ["x", "b", "y", "a", "c"]}  # unjudged x and y are out of play
    frame = metrics.judged_only(qrels, run, lowest=1.0)
    gains = np.array([0.0, 2.0, 1.0])  # b, a, c after the shift
    expected = metrics.ndcg_at_k(gains, gains, 10)
    assert frame.loc[0, "judged_ndcg@10"] == pytest.approx(expected)
    assert expected == pytest.approx((2 / np.log2(3) + 1 / np.log2(4)) / (2 + 1 / np.log2(3)))
    best = metrics.judged_only(qrels, {"q": ["a", "c", "b"]}, lowest=1.0)
    assert best.loc[0, "judged_ndcg@10"] == pytest.approx(1.0)
    share = metrics.judged_share(qrels, run, depth=4)
    assert share["q"] == pytest.approx(2 / 4)

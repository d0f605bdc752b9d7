import pandas as pd
import pytest

from shopflow.models import lexical, popularity

pytestmark = pytest.mark.model


def test_bm25_finds_lexical_matches_and_misses_synonyms():
    bm25 = lexical.BM25(
        ["p1", "p2", "p3"], ["grey velvet sofa", "oak coffee table", "steel kettle"]
    )
    hits = bm25.search(["grey sofa", "kettle", "couch"], k=3)
    assert hits[0][0][0] == "p1" and hits[1][0][0] == "p3"
    assert hits[2] == []  # the lexical gap the neural models must close


def test_popularity_and_cooccurrence_learn_planted_patterns():
    pairs = pd.DataFrame(
        {"split": ["train"] * 3, "label": [1, 3, 0], "product_id": ["a", "b", "c"]}
    )
    sequences = pd.DataFrame(
        {
            "split": ["train"] * 4 + ["test"],
            "history": [["sofa"], ["sofa"], ["tent"], ["sofa"], ["sofa"]],
            "product_id": ["table", "table", "backpack", "rug", "table"],
        }
    )
    popular = popularity.popularity(pairs, sequences)
    assert popular.index[0] == "table"  # 2 purchases x 3
    co = popularity.cooccurrence(sequences, popular)
    recommender = popularity.CoOccurrenceRecommender(co, popular)
    assert recommender.recommend(["sofa"], k=2) == ["table", "rug"]
    assert recommender.recommend(["never-seen"], k=1) == ["table"]  # popularity fallback


def test_bm25_scores_given_products_and_a_query_of_stop_words_scores_zero():
    bm25 = lexical.BM25(["a", "b"], ["red mug", "blue lamp"])
    assert bm25.scores_of("red", ["b", "a"])[0] == 0 and bm25.scores_of("red", ["b", "a"])[1] > 0
    assert bm25.scores_of("the", ["a", "b"]).tolist() == [0.0, 0.0]  # no term left to match
    assert bm25.scores_of("", ["a"]).tolist() == [0.0]
    assert bm25.search(["the"], k=5) == [[]]

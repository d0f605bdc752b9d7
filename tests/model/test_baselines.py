import pandas as pd
import pytest

from shopflow.core.errors import ConfigError, StageInputError
from shopflow.evaluation import bm25_tuning, ranking
from shopflow.models import lexical, popularity

pytestmark = pytest.mark.model


def titles(ids, texts, **settings):
    return lexical.BM25.of_fields(ids, {"title": texts}, lexical.Bm25Settings(**settings))


def test_bm25_finds_lexical_matches_and_misses_synonyms():
    bm25 = titles(["p1", "p2", "p3"], ["grey velvet sofa", "oak coffee table", "steel kettle"])
    hits = bm25.search(["grey sofa", "kettle", "couch"], k=3)
    assert hits[0][0][0] == "p1" and hits[1][0][0] == "p3"
    assert hits[2] == []  # the lexical gap the neural models must close


def test_bm25_stems_and_keeps_sizes_of_one_character():
    bm25 = titles(["t", "h"], ["oak tables 2 x 4", "garden hoses"])
    assert bm25.search(["table"], k=2)[0][0][0] == "t"  # "tables" and "table" share a stem
    assert bm25.search(["hose"], k=2)[0][0][0] == "h"
    assert bm25.scores_of("4", ["t", "h"])[0] > 0  # a one-character size is a term
    unstemmed = titles(["t"], ["oak tables"], stemmer=None)
    assert unstemmed.search(["table"], k=1) == [[]]
    with pytest.raises(ConfigError, match=r"bm25\.stemmer"):
        titles(["t"], ["oak"], stemmer="klingon")


def test_bm25f_weights_fields_and_normalises_each_by_its_own_length():
    fields = {
        "title": ["oak table", "pine chair"],
        "description": ["a chair", "a chair " + "solid wood " * 20],
    }
    by_title = lexical.BM25.of_fields(
        ["a", "b"], fields, lexical.Bm25Settings(weights={"title": 1.0, "description": 0.2})
    )
    assert [p for p, _ in by_title.search(["oak chair"], k=2)[0]] == ["a", "b"]
    by_text = by_title.over(lexical.Bm25Settings(weights={"title": 0.2, "description": 1.0}))
    scores = by_text.scores_of("chair", ["a", "b"])
    assert scores[0] > 0 and scores[1] > 0
    # "a"'s short description holds "chair" with no padding around it: it scores higher
    assert (
        by_text.scores_of("chair", ["a"])[0]
        > by_title.over(lexical.Bm25Settings(weights={"description": 1.0})).scores_of(
            "chair", ["b"]
        )[0]
    )
    per_field = by_title.field_scores_of("chair", ["a", "b"])
    assert set(per_field) == set(lexical.PRODUCT_FIELDS)
    assert per_field["title"].tolist()[0] == 0 and per_field["title"][1] > 0
    assert per_field["brand"].tolist() == [0.0, 0.0]  # a field without weight scores 0
    with pytest.raises(ConfigError, match="unknown field"):
        lexical.Bm25Settings(weights={"colour": 1.0})


def test_bm25_search_ties_keep_catalogue_order_at_every_depth():
    bm25 = titles([f"p{i}" for i in range(30)], ["red mug"] * 30)
    top3 = [p for p, _ in bm25.search(["mug"], k=3)[0]]
    top20 = [p for p, _ in bm25.search(["mug"], k=20)[0]]
    assert top3 == ["p0", "p1", "p2"] == top20[:3]


def test_tuning_finds_the_settings_a_planted_shop_needs_and_never_scores_worse():
    # relevant products say the query once in a long title; decoys repeat a query word in a
    # short one: only a low b (little length normalisation) and a low k1 rank them right
    ids, texts, qrels = [], [], {}
    for i in range(30):
        word, other = f"item{i}", f"thing{i}"
        ids += [f"r{i}", f"d{i}"]
        texts += [f"{word} {other} " + " ".join(f"filler{j}" for j in range(12)), f"{word} {word}"]
        qrels[f"{word} {other}"] = {f"r{i}": 3.0, f"d{i}": 0.0}
    bm25 = titles(ids, texts)
    grid = bm25_tuning.TuningGrid(k1=[0.3, 1.2, 3.0], b=[0.0, 0.75, 1.0], weights=[1.0])
    start = bm25_tuning.mean_ndcg_at_10(bm25, list(qrels), qrels)
    best, trail = bm25_tuning.tune(bm25, list(qrels), qrels, grid)
    assert trail["ndcg@10_start"] == round(start, 4) < 0.7  # the decoys win at k1 1.2, b 0.75
    assert trail["ndcg@10_tuned"] == 1.0 and best.settings.b == 0.0
    assert bm25_tuning.mean_ndcg_at_10(best, list(qrels), qrels) >= start
    assert trail["fields_with_text"] == ["title"]
    hits = best.search(list(qrels), k=10)
    per_query = ranking.per_query(
        qrels, {q: [p for p, _ in h] for q, h in zip(qrels, hits, strict=True)}
    )
    assert per_query["ndcg@10"].mean() == pytest.approx(trail["ndcg@10_tuned"], abs=1e-4)


def test_bm25_settings_round_trip_and_a_damaged_file_is_named(tmp_path):
    settings = lexical.Bm25Settings(k1=0.9, b=0.4, weights={"title": 1.0, "brand": 0.5})
    settings.save(tmp_path, {"tuned": True})
    assert lexical.Bm25Settings.load(tmp_path) == settings
    (tmp_path / lexical.SETTINGS).write_text('{"k1": "x"}')
    with pytest.raises(StageInputError, match="not BM25 settings"):
        lexical.Bm25Settings.load(tmp_path)
    with pytest.raises(StageInputError, match="run the baselines stage"):
        lexical.Bm25Settings.load(tmp_path / "missing")


def test_popularity_counts_weighted_interactions_of_the_training_split():
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
    assert popular.index[0] == "table" and popular["table"] == 6  # 2 train purchases x 3
    assert "c" not in popular.index  # shown, never clicked


def test_bm25_scores_given_products_and_a_query_of_stop_words_scores_zero():
    bm25 = titles(["a", "b"], ["red mug", "blue lamp"])
    assert bm25.scores_of("red", ["b", "a"])[0] == 0 and bm25.scores_of("red", ["b", "a"])[1] > 0
    assert bm25.scores_of("the", ["a", "b"]).tolist() == [0.0, 0.0]  # no term left to match
    assert bm25.scores_of("", ["a"]).tolist() == [0.0]
    assert bm25.search(["the"], k=5) == [[]]

"""The feature ranker: LambdaMART learns a planted signal, and a bundle that serves it ranks
exactly as the reranker stage evaluated it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import reranker, retriever
from shopflow.core.artifacts import read_json, write_json
from shopflow.core.config import BoostingConfig
from shopflow.models.feature_ranker import FEATURES, FeatureRanker, RankingData, labels_of
from tests.conftest import tiny_params
from tests.model.test_engine import bundle
from tests.model.test_finetune import write_planted_shop

pytestmark = pytest.mark.model

CONFIG = BoostingConfig(
    enabled=True,
    trees=200,
    learning_rate=0.1,
    leaves=7,
    min_data_in_leaf=5,
    early_stopping=20,
    stop_share=0.2,
)


def planted(queries: int, seed: int) -> RankingData:
    """Lists of 10 where only the title's share of query terms decides the grade."""
    rng = np.random.default_rng(seed)
    share_at = FEATURES.index("title_term_share")
    features = rng.normal(size=(queries * 10, len(FEATURES))).astype(np.float32)
    share = rng.integers(0, 4, queries * 10) / 3
    features[:, share_at] = share
    return RankingData(features, labels_of(share * 2 + 1, lowest=1.0), [10] * queries)


def test_the_feature_ranker_learns_a_planted_feature_and_ignores_noise(tmp_path):
    ranker, info = FeatureRanker.fit(planted(200, 0), planted(40, 1), CONFIG, seed=0)
    assert next(iter(info["importance"])) == "title_term_share"
    assert info["importance"]["title_term_share"] > 0.8
    assert info["stop_ndcg@10"] > 0.99 and info["trees"] >= 1
    assert set(ranker.curve) == {"train", "stop"}  # the learning curve, one point per tree
    assert len(ranker.curve["stop"]) >= info["trees"]
    assert ranker.curve["stop"][info["trees"] - 1] == pytest.approx(info["stop_ndcg@10"], abs=1e-4)
    test = planted(20, 2)
    scores = ranker.score(test.features[:10])
    assert np.corrcoef(scores, test.labels[:10])[0, 1] > 0.95
    ranker.save(tmp_path / "ranker", info)
    again = FeatureRanker.load(tmp_path / "ranker")
    assert np.allclose(again.score(test.features), ranker.score(test.features), atol=1e-6)
    meta = read_json(tmp_path / "ranker/shopflow.json")
    write_json(tmp_path / "ranker/shopflow.json", {**meta, "features": ["bm25", "colour"]})
    with pytest.raises(Exception, match="re-run the reranker stage"):
        FeatureRanker.load(tmp_path / "ranker")  # a feature this code does not compute


def test_a_ranker_saved_before_the_per_field_features_still_loads_and_scores(tmp_path):
    older = tuple(f for f in FEATURES if not f.startswith("bm25_") or f == "bm25_rank")
    train, stop = planted(200, 0), planted(40, 1)
    cols = [FEATURES.index(f) for f in older]
    subset = [RankingData(d.features[:, cols], d.labels, d.groups) for d in (train, stop)]
    ranker, info = FeatureRanker.fit(*subset, CONFIG, seed=0, features=older)
    ranker.save(tmp_path / "ranker", info)
    again = FeatureRanker.load(tmp_path / "ranker")
    assert again.features == older  # the engine computes exactly these, in this order
    assert np.allclose(again.score(subset[0].features), ranker.score(subset[0].features))


def test_labels_count_thirds_of_a_grade_above_the_bottom():
    assert labels_of(np.array([1.0, 1.33, 2.67, 3.0, 0.5]), lowest=1.0).tolist() == [0, 1, 5, 6, 0]


def test_a_bundle_serving_the_feature_ranker_ranks_as_the_stage_evaluated(in_tmp):
    from shopflow.engine.bundle import load_engine
    from shopflow.evaluation import ranking
    from shopflow.evaluation.systems import ModelSystem

    write_planted_shop(in_tmp)
    params = tiny_params("reranker.steps=2", "reranker.candidates=12", "ranker.stop_share=0.5")
    retriever.run(tiny_params("retriever.steps=1", "retriever.lr=1e-9"))
    result = reranker.run(params)
    assert result["feature_ranker"]["train_queries"] >= 10
    assert "ltr_search" in result["test"] and "vs_bm25" not in result["compare_ltr"]
    meta = in_tmp / "data/models/reranker/shopflow.json"  # as if the mix had chosen it
    write_json(meta, {**read_json(meta), "first_stage": "hybrid", "final": "ltr", "serve": False})
    engine = load_engine(bundle(in_tmp, params, "ltr"))
    assert engine.ranker is not None and engine.reranker is None
    assert engine.first_stage == "hybrid" and engine.reorders
    judged = pd.read_parquet(in_tmp / "data/prepared/judgments.parquet")
    qrels = ranking.qrels_from(judged[judged["split"] == "test"])
    served = ranking.per_query(qrels, ModelSystem(engine).search(list(qrels)))
    evaluated = pd.read_parquet(in_tmp / "data/models/reranker/eval/ltr_search.parquet")
    merged = served.merge(evaluated, on="query", suffixes=("_served", "_stage"))
    assert len(merged) == len(qrels)
    assert (merged["ndcg@10_served"] - merged["ndcg@10_stage"]).abs().max() < 1e-6
    given = ["p-red-mug", "p-blue-lamp", "p-white-towel"]
    assert sorted(h.product_id for h in engine.rank("apple mug", given)) == sorted(given)


def test_phrase_features_see_stems_phrases_and_sizes():
    import pandas as pd

    from shopflow.engine.catalogue import Catalogue
    from shopflow.engine.ranking_features import FeatureExtractor
    from shopflow.models.lexical import BM25, Bm25Settings

    products = pd.DataFrame(
        {
            "product_id": ["a", "b", "c"],
            "title": [
                "copper pipe fittings 1/2 in",
                "pipe with copper fitting 3/4 in",
                "oak table",
            ],
            **dict.fromkeys(("description", "brand", "category", "attributes", "price"), None),
        }
    )
    catalogue = Catalogue(products)
    extract = FeatureExtractor(
        catalogue, BM25.of_fields(catalogue.ids, catalogue.fields, Bm25Settings())
    )
    names = (
        "title_stem_share",
        "title_bigram_share",
        "number_share",
        "query_numbers",
        "first_match",
    )
    rows = extract("copper pipe 1/2", [("a", 0.0), ("b", 0.0), ("c", 0.0)], [0.5, 0.4, 0.1], names)
    a, b, c = (dict(zip(names, row, strict=True)) for row in rows)
    assert a["title_stem_share"] == 1.0 and b["title_stem_share"] == 0.5  # b lacks the sizes
    assert a["title_bigram_share"] > b["title_bigram_share"]  # "copper pipe" as a phrase
    assert a["number_share"] == 1.0 and b["number_share"] == 0.0 and a["query_numbers"] == 2
    assert a["first_match"] == 0 and c["first_match"] == 99 and c["title_stem_share"] == 0

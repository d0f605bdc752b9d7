"""The search engine on the tiny model: a saved bundle serves exactly what the stages evaluated,
filters and exclusions hold, and a shop without a reranker is served by the retriever."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pandas as pd
import pytest

from pipelines import reranker, retriever
from shopflow.data.profiles import WEIGHTS
from shopflow.engine.bundle import bundle_settings, load_engine, save_bundle
from shopflow.engine.recommend import Recommender, RecommendSettings
from shopflow.engine.search import Filters
from shopflow.models.recommenders import ItemIndex
from tests.conftest import tiny_params
from tests.model.test_finetune import write_planted_shop

pytestmark = pytest.mark.model


@pytest.fixture
def trained_shop(in_tmp):
    write_planted_shop(in_tmp)
    params = tiny_params("retriever.steps=2", "reranker.steps=2", "reranker.candidates=12")
    retriever.run(params)
    reranker.run(params)
    prepared = in_tmp / "data/prepared"
    users = pd.DataFrame(
        {
            "user_key": ["u1"],
            "recent": [["p-red-kettle", "p-blue-mug"]],
            "purchased": [["p-red-kettle"]],
        }
    )
    users.to_parquet(prepared / "users.parquet")
    products = pd.read_parquet(prepared / "products.parquet")["product_id"]
    bought = pd.DataFrame(
        {  # u1 bought the red kettle twice and clicked the blue mug; the others buy sets
            "ts": pd.to_datetime(
                ["2026-10-01", "2026-10-05", "2026-10-06"] + ["2026-10-02"] * 6, utc=True
            ),
            "user_key": ["u1", "u1", "u1", "u2", "u2", "u2", "u3", "u3", "u3"],
            "product_id": ["p-red-kettle", "p-red-kettle", "p-blue-mug"]
            + ["p-red-kettle", "p-red-lamp", "p-red-towel"] * 2,
            "event_type": ["purchase", "purchase", "click"] + ["purchase"] * 6,
        }
    )
    acts = bought.assign(split="train", weight=bought["event_type"].map(WEIGHTS))
    settings = RecommendSettings(exclude="purchased", serve="ease", ease_l2=1.0)
    as_of = pd.Timestamp("2026-10-10", tz="UTC")
    Recommender.fit(acts, ItemIndex(products), as_of, settings).save(
        in_tmp / "data/models/recommender"
    )
    return in_tmp, params


def bundle(folder, params, name="bundle", reranker_dir="data/models/reranker"):
    return save_bundle(
        folder / name,
        retriever_dir=folder / "data/models/retriever",
        reranker_dir=folder / reranker_dir,
        prepared_dir=folder / "data/prepared",
        settings=bundle_settings(params),
        info={"model_name": "test"},
        recommender_dir=folder / "data/models/recommender",
    )


def test_a_loaded_bundle_ranks_exactly_as_the_reranker_stage_evaluated(trained_shop):
    folder, params = trained_shop
    engine = load_engine(bundle(folder, params))
    assert engine.reranker is not None and engine.index.kind == "exact"
    evaluated = pd.read_parquet(folder / "data/models/reranker/eval/search.parquet")
    judged = pd.read_parquet(folder / "data/prepared/judgments.parquet")
    queries = sorted(judged.loc[judged["split"] == "test", "query"].unique())
    hits = engine.search(queries, k=params.reranker.candidates)
    from shopflow.evaluation import ranking

    qrels = ranking.qrels_from(judged[judged["split"] == "test"])
    ranked = {q: [h.product_id for h in row] for q, row in zip(queries, hits, strict=True)}
    served = ranking.per_query(qrels, ranked, params.evaluation.relevant_at)
    merged = served.merge(evaluated, on="query", suffixes=("_served", "_stage"))
    assert len(merged) == len(queries)
    assert (merged["ndcg@10_served"] - merged["ndcg@10_stage"]).abs().max() < 1e-6


def test_filters_rank_and_recommend_keep_their_promises(trained_shop):
    folder, params = trained_shop
    engine = load_engine(bundle(folder, params))
    hits = engine.search(["plum mug"], k=5, filters=Filters(category="home", max_price=10.0))[0]
    assert len(hits) == 5
    assert engine.search(["plum mug"], k=5, filters=Filters(category="Garden"))[0] == []
    assert engine.search(["plum mug"], k=5, filters=Filters(min_price=11))[0] == []
    given = ["p-red-mug", "p-blue-lamp", "p-white-towel"]
    assert sorted(h.product_id for h in engine.rank("plum mug", given)) == sorted(given)
    assert engine.recent("u1") == ["p-red-kettle", "p-blue-mug"] and engine.recent("nobody") == []
    recommended = [h.product_id for h in engine.recommend(["u1"], k=10)[0]]
    assert len(recommended) == 10 and "p-red-kettle" not in recommended  # bought: excluded
    # what others bought with the kettle, and the mug u1 clicked (EASE; clicks are not excluded)
    assert set(recommended[:3]) == {"p-red-lamp", "p-red-towel", "p-blue-mug"}
    again = engine.recommender.with_settings(
        replace(engine.recommender.settings, serve="buy_again")
    )
    assert again.recommend(["u1"], k=1)[0][0][0] == "p-blue-mug"  # clicked, not bought: allowed
    anonymous = [h.product_id for h in engine.recommend([None], k=3, recents=[["p-red-lamp"]])[0]]
    # nothing bought, nothing left out: what was bought with the lamp comes first
    assert set(anonymous[:2]) == {"p-red-kettle", "p-red-towel"}
    personal = engine.search(["plum mug"], k=5, recents=[engine.recent("u1")])[0]
    assert len(personal) == 5


def test_without_a_reranker_the_retriever_order_is_served(trained_shop):
    folder, params = trained_shop
    shutil.rmtree(folder / "data/models/reranker")
    engine = load_engine(bundle(folder, params, "no-reranker"))
    assert engine.reranker is None
    hits = engine.search(["fig towel"], k=6)[0]
    assert [h.score for h in hits] == pytest.approx([h.retriever_score for h in hits], abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_onnx_runtime_scores_like_torch_and_int8_is_gated_on_ndcg(trained_shop):
    from shopflow.serving.model_store import choose_onnx

    folder, params = trained_shop
    path = bundle(folder, params, "onnx")
    decision = choose_onnx(path, tiny_params("serving.onnx=int8"), folder / "data/prepared")
    checks = decision["checks"]
    assert set(checks) == {"torch", "fp32", "int8"}
    assert abs(checks["fp32"]["ndcg_drop"]) < 1e-3  # the same model, another runtime
    expected = "int8" if checks["int8"]["ndcg_drop"] < 0.005 else "fp32"
    assert decision["chosen"] == expected
    torch_engine = load_engine(path, runtime="torch")
    onnx_engine = load_engine(path, runtime="fp32")
    a = torch_engine.rank("plum mug", ["p-red-mug", "p-blue-lamp", "p-purple-mug"])
    b = onnx_engine.rank("plum mug", ["p-red-mug", "p-blue-lamp", "p-purple-mug"])
    assert [h.score for h in b] == pytest.approx([h.score for h in a], abs=1e-4)
    assert load_engine(path).info["settings"]["onnx"] == decision["chosen"]


def test_a_hybrid_bundle_fuses_bm25_and_serves_what_the_stage_evaluated(in_tmp):
    from shopflow.evaluation import ranking
    from shopflow.evaluation.systems import ModelSystem

    write_planted_shop(in_tmp)
    params = tiny_params("serving.first_stage=hybrid", "reranker.serve=never", "reranker.steps=2")
    retriever.run(tiny_params("retriever.steps=1", "retriever.lr=1e-9"))  # dense: near random
    reranker.run(params)
    engine = load_engine(bundle(in_tmp, params))
    assert engine.first_stage == "hybrid" and engine.reranker is None
    top = engine.search(["red mug"], k=5)[0]
    assert top[0].product_id == "p-red-mug"  # BM25's exact match lifts it over random cosines
    assert [h.score for h in top] == sorted((h.score for h in top), reverse=True)
    queries = ["red mug", "plum towel"]
    ranked = ModelSystem(engine).search(queries)
    for query, hits in zip(queries, engine.search(queries, k=10), strict=True):
        assert [h.product_id for h in hits] == ranked[query][:10]  # any k: the same top
    given = ["p-blue-mug", "p-red-lamp", "p-red-mug"]
    assert engine.rank("red mug", given)[0].product_id == "p-red-mug"
    judged = pd.read_parquet(in_tmp / "data/prepared/judgments.parquet")
    test = judged[judged["split"] == "test"]
    qrels = ranking.qrels_from(test)
    served = ranking.per_query(qrels, ModelSystem(engine).search(list(qrels)))
    evaluated = pd.read_parquet(in_tmp / "data/models/reranker/eval/hybrid_search.parquet")
    merged = served.merge(evaluated, on="query", suffixes=("_served", "_stage"))
    assert len(merged) == len(qrels)
    assert (merged["ndcg@10_served"] - merged["ndcg@10_stage"]).abs().max() < 1e-6

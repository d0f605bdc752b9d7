"""The two sides of an A/B evaluation, behind one interface: search a list of queries to
depth 100, rank each query's judged products (the judged-only protocol), recommend for the
held-out purchases' customers, time one search.

A model system is a retriever → reranker engine (`engine.search.SearchEngine`, the code the
service runs); the baseline system is tuned BM25F for search and the best recommendation
baseline chosen on valid (popularity, buy again, EASE or item-kNN), the first champion of
every shop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from shopflow.core import paths
from shopflow.core.artifacts import read_json
from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.data.tables import Tables
from shopflow.engine.bundle import (
    RANKER,
    RECOMMENDER,
    assemble_engine,
    bundle_settings,
    read_bundle_info,
)
from shopflow.engine.fusion import order_of
from shopflow.engine.recommend import Recommender, RecommendSettings, Tower
from shopflow.engine.search import SearchEngine
from shopflow.evaluation import ranking
from shopflow.evaluation.heldout import HeldOut
from shopflow.evaluation.offline import test_qrels
from shopflow.evaluation.ranking import Qrels
from shopflow.evaluation.recommend import RecommendTask, lists_of
from shopflow.models.base import require_model
from shopflow.models.device import device_of
from shopflow.models.feature_ranker import FeatureRanker
from shopflow.models.lexical import BM25, Bm25Settings
from shopflow.models.popularity import popularity_prior
from shopflow.models.recommenders import ItemIndex

DEPTH = 100  # ranking depth scored (Recall@100)
TOP = 10  # what a shopper sees


class ModelSystem:
    """A first stage → reranker engine, ranked to depth 100: the reordered candidates first,
    then the first stage's order (so Recall@100 is the first stage's); recommendations from
    its recommender fitted at the test split's start."""

    kind = "model"

    def __init__(self, engine: SearchEngine, recommender: Recommender | None = None) -> None:
        self.engine = engine
        self.recommender = recommender

    def search(self, queries: Sequence[str]) -> dict[str, list[str]]:
        engine = self.engine
        found = engine.candidates_for(queries, k=DEPTH)
        n_rerank = engine.candidates if engine.reorders else 0
        heads = engine.rerank(queries, found, n_rerank, limit=n_rerank)
        return {
            query: [h.product_id for h in head] + [p for p, _ in cands[n_rerank:]]
            for query, head, (cands, _) in zip(queries, heads, found, strict=True)
        }

    def rank_judged(self, qrels: Qrels) -> dict[str, list[str]]:
        """Each query's judged products in the order `/rank` serves them."""
        return {
            query: [h.product_id for h in self.engine.rank(query, list(judged))]
            for query, judged in qrels.items()
        }

    def recommend(self, task: RecommendTask) -> dict[str, list[str]]:
        return recommend_lists(self.recommender, task)

    def search_one(self, query: str) -> None:
        self.engine.search([query], k=TOP)


class BaselineSystem:
    """Tuned BM25F for search, the best recommendation baseline (chosen on valid) for
    recommendation: the first champion."""

    kind = "baseline"

    def __init__(
        self, products: pd.DataFrame, bm25: Bm25Settings, recommender: Recommender | None
    ) -> None:
        self.bm25 = BM25.of_products(products, bm25)
        self.recommender = recommender

    def search(self, queries: Sequence[str]) -> dict[str, list[str]]:
        hits = self.bm25.search(list(queries), k=DEPTH)
        return {q: [pid for pid, _ in h] for q, h in zip(queries, hits, strict=True)}

    def rank_judged(self, qrels: Qrels) -> dict[str, list[str]]:
        """Each query's judged products by BM25 score (products sharing no word last)."""
        return {
            query: order_of(ids, self.bm25.scores_of(query, ids), positive_only=False)
            for query, ids in ((q, list(judged)) for q, judged in qrels.items())
        }

    def recommend(self, task: RecommendTask) -> dict[str, list[str]]:
        return recommend_lists(self.recommender, task)

    def search_one(self, query: str) -> None:
        self.bm25.search([query], k=TOP)


System = ModelSystem | BaselineSystem


def recommend_lists(recommender: Recommender | None, task: RecommendTask) -> dict[str, list[str]]:
    if recommender is None:
        raise StageInputError(
            "the test split has purchases but this system has no recommender (re-run the "
            "baselines and recommender stages)"
        )
    return lists_of(recommender, task)


def fitted_for(
    settings: RecommendSettings | None,
    split: HeldOut,
    ranker: FeatureRanker | None = None,
    tower: Tower | None = None,
) -> Recommender | None:
    """A recommender with these settings (and ranker) fitted on tonight's interactions
    before the test split; None without purchases to recommend for, or without settings."""
    if settings is None or split.purchases is None or split.interactions is None:
        return None
    index = ItemIndex(split.products["product_id"])
    return Recommender.fit(
        split.interactions, index, split.purchases.start, settings, ranker, tower
    )


def champion_system(bundle: Path | None, split: HeldOut, params: Params) -> System:
    """The champion over tonight's catalogue: its saved bundle (the catalogue embedded again,
    tonight's popularity as its prior, its recommender refitted on tonight's interactions),
    or the baseline when `bundle` is None (tonight's tuned baselines)."""
    products = split.products
    if bundle is None:
        baseline = None
        if paths.RECOMMEND_BASELINE.exists():
            settings = RecommendSettings.from_dict(read_json(paths.RECOMMEND_BASELINE))
            baseline = fitted_for(settings, split)
        return BaselineSystem(products, Bm25Settings.load(paths.BM25_SETTINGS), baseline)
    settings = read_bundle_info(bundle)["settings"]
    prior = popularity_prior(split.popular, products["product_id"].tolist())
    engine = assemble_engine(
        bundle / "retriever",
        bundle / "reranker",
        products,
        settings,
        device_of(params),
        item_prior=prior,
        ranker_dir=bundle / RANKER,
    )
    saved = Recommender.load(bundle / RECOMMENDER) if (bundle / RECOMMENDER).exists() else None
    return ModelSystem(engine, refitted(saved, split, engine))


def challenger_system(params: Params, split: HeldOut) -> ModelSystem:
    """Tonight's retriever, reranker and recommender (the stage outputs) over tonight's
    catalogue."""
    require_model(paths.RETRIEVER, "retriever")
    engine = assemble_engine(
        paths.RETRIEVER, paths.RERANKER, split.products, bundle_settings(params), device_of(params)
    )
    saved = Recommender.load(paths.RECOMMENDER) if split.purchases is not None else None
    return ModelSystem(engine, refitted(saved, split, engine))


def refitted(saved: Recommender | None, split: HeldOut, engine: SearchEngine) -> Recommender | None:
    """A saved recommender's settings and ranker, fitted at the test split's start, with the
    engine's user tower."""
    if saved is None:
        return None
    return fitted_for(saved.settings, split, saved.ranker, engine.user_tower())


def test_search_scores(engine: SearchEngine, tables: Tables, params: Params) -> pd.DataFrame | None:
    """Per-query test scores of an engine, ranked to depth 100 as the A/B evaluation ranks
    (None without judged test queries)."""
    qrels = test_qrels(tables)
    if not qrels:
        return None
    ranked = ModelSystem(engine).search(list(qrels))
    return ranking.per_query(qrels, ranked, params.evaluation.relevant_at)

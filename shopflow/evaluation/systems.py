"""The two sides of an A/B evaluation, behind one interface: search a list of queries to
depth 100, rank each query's judged products (the judged-only protocol), recommend for
histories, time one search.

A model system is a retriever → reranker engine (`engine.search.SearchEngine`, the code the
service runs); the baseline system is BM25 for search and popularity for recommendation, the
first champion of every shop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from shopflow.core import paths
from shopflow.core.config import Params
from shopflow.data.features import product_text
from shopflow.data.tables import Tables
from shopflow.engine.bundle import RANKER, assemble_engine, bundle_settings, read_bundle_info
from shopflow.engine.fusion import order_of
from shopflow.engine.search import SearchEngine
from shopflow.evaluation import ranking
from shopflow.evaluation.offline import test_qrels
from shopflow.evaluation.ranking import Qrels
from shopflow.models.base import require_model
from shopflow.models.device import device_of
from shopflow.models.lexical import BM25
from shopflow.models.popularity import popularity_prior, without_history

DEPTH = 100  # ranking depth scored (Recall@100)
TOP = 10  # what a shopper sees


class ModelSystem:
    """A first stage → reranker engine, ranked to depth 100: the reordered candidates first,
    then the first stage's order (so Recall@100 is the first stage's)."""

    kind = "model"

    def __init__(self, engine: SearchEngine) -> None:
        self.engine = engine

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

    def recommend(
        self, histories: Sequence[Sequence[str]], exclude: Sequence[Sequence[str]] | None
    ) -> list[list[str]]:
        hits = self.engine.recommend(histories, k=TOP, exclude=exclude)
        return [[h.product_id for h in row] for row in hits]

    def search_one(self, query: str) -> None:
        self.engine.search([query], k=TOP)


class BaselineSystem:
    """BM25 for search, popularity for recommendation: the first champion."""

    kind = "baseline"

    def __init__(self, products: pd.DataFrame, popular: pd.Series) -> None:
        self.bm25 = BM25(products["product_id"], product_text(products))
        self.popular = list(popular.index)

    def search(self, queries: Sequence[str]) -> dict[str, list[str]]:
        hits = self.bm25.search(list(queries), k=DEPTH)
        return {q: [pid for pid, _ in h] for q, h in zip(queries, hits, strict=True)}

    def rank_judged(self, qrels: Qrels) -> dict[str, list[str]]:
        """Each query's judged products by BM25 score (products sharing no word last)."""
        return {
            query: order_of(ids, self.bm25.scores_of(query, ids), positive_only=False)
            for query, ids in ((q, list(judged)) for q, judged in qrels.items())
        }

    def recommend(
        self, histories: Sequence[Sequence[str]], exclude: Sequence[Sequence[str]] | None
    ) -> list[list[str]]:
        depth = TOP + max((len(e) for e in exclude or ()), default=0)
        top = self.popular[:depth]
        return [without_history(top, e if exclude else []) for e in (exclude or histories)]

    def search_one(self, query: str) -> None:
        self.bm25.search([query], k=TOP)


System = ModelSystem | BaselineSystem


def champion_system(
    bundle: Path | None, products: pd.DataFrame, popular: pd.Series, params: Params
) -> System:
    """The champion over tonight's catalogue: its saved bundle (the catalogue embedded again,
    tonight's popularity as its recommendation prior), or the baseline when `bundle` is None."""
    if bundle is None:
        return BaselineSystem(products, popular)
    settings = read_bundle_info(bundle)["settings"]
    prior = popularity_prior(popular, products["product_id"].tolist())
    engine = assemble_engine(
        bundle / "retriever",
        bundle / "reranker",
        products,
        settings,
        device_of(params),
        item_prior=prior,
        ranker_dir=bundle / RANKER,
    )
    return ModelSystem(engine)


def challenger_system(params: Params, products: pd.DataFrame) -> ModelSystem:
    """Tonight's retriever and reranker (the stage outputs) over tonight's catalogue."""
    require_model(paths.RETRIEVER, "retriever")
    engine = assemble_engine(
        paths.RETRIEVER, paths.RERANKER, products, bundle_settings(params), device_of(params)
    )
    return ModelSystem(engine)


def test_search_scores(engine: SearchEngine, tables: Tables, params: Params) -> pd.DataFrame | None:
    """Per-query test scores of an engine, ranked to depth 100 as the A/B evaluation ranks
    (None without judged test queries)."""
    qrels = test_qrels(tables)
    if not qrels:
        return None
    ranked = ModelSystem(engine).search(list(qrels))
    return ranking.per_query(qrels, ranked, params.evaluation.relevant_at)

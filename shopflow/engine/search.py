"""Search, recommend and rank: the one implementation behind offline evaluation and the service.

`SearchEngine` retrieves candidates over the whole catalogue with the two-tower retriever
(precomputed product vectors, `models.vector_index`), or with it and BM25 fused by reciprocal
rank (`engine.fusion`: the hybrid first stage), reorders the top `candidates` with the
cross-encoder when one is served, and returns the top k. The reranker stage's evaluation,
the A/B evaluation and the BentoML service all call it, so the numbers in `metrics/` are the
numbers of what is served. An engine is loaded from a serving bundle by `engine.bundle`.

The steps are public (`candidates_for`, `rank_candidates`, `score_pairs`, `merge`) because
the service runs the reranker's `score_pairs` in a batching worker of its own and composes
the steps itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from shopflow.core.errors import StageInputError
from shopflow.data.features import query_text
from shopflow.engine.catalogue import Candidates, Catalogue, Filters, Hit
from shopflow.engine.fusion import (
    DENSE,
    FUSION_DEPTH,
    HYBRID,
    order_of,
    reciprocal_rank_fusion,
)
from shopflow.engine.ranking_features import FeatureExtractor
from shopflow.engine.recommend import Recommender, Tower, user_tower
from shopflow.models.bi_encoder import BiEncoder
from shopflow.models.cross_encoder import CrossEncoder
from shopflow.models.feature_ranker import FeatureRanker
from shopflow.models.lexical import BM25, Bm25Settings
from shopflow.models.vector_index import VectorIndex

log = logging.getLogger(__name__)


class PairScorer:
    """Cross-encoder scores of (query, product) pairs, products tokenised once and cached.

    Its own class because the service runs it in a batching worker of its own."""

    def __init__(self, reranker: CrossEncoder | None, catalogue: Catalogue) -> None:
        self.reranker = reranker
        self.catalogue = catalogue
        self._pieces: dict[int, list[int]] = {}  # product position -> reranker tokens

    def __call__(
        self, queries: Sequence[str], product_ids: Sequence[str], priors: Sequence[float]
    ) -> np.ndarray:
        """Cross-encoder scores; the retriever cosine (the prior) when there is no reranker."""
        if self.reranker is None or not len(product_ids):
            return np.asarray(priors, np.float32)
        unique = list(dict.fromkeys(queries))
        query_pieces = dict(zip(unique, self.reranker.pairs.pieces(unique), strict=True))
        positions = [self.catalogue.position[p] for p in product_ids]
        missing = [p for p in dict.fromkeys(positions) if p not in self._pieces]
        if missing:
            texts = [self.catalogue.texts[p] for p in missing]
            self._pieces.update(zip(missing, self.reranker.pairs.pieces(texts), strict=True))
        return self.reranker.score_tokens(
            [query_pieces[q] for q in queries],
            [self._pieces[p] for p in positions],
            priors,
            progress="reranking" if len(positions) > 5000 else None,
        )


class SearchEngine:
    """First stage (dense, or hybrid with BM25) → cross-encoder or feature ranker (or
    neither) over one catalogue. BM25 (`lexical`) is built here, with the `bm25` settings the
    baselines stage tuned, when the hybrid or the feature ranker needs it and none is given
    to share."""

    def __init__(
        self,
        retriever: BiEncoder,
        reranker: CrossEncoder | None,
        catalogue: Catalogue,
        candidates: int = 50,
        history_items: int = 3,
        ann_min_items: int = 100_000,
        users: pd.DataFrame | None = None,
        info: dict | None = None,
        first_stage: str = DENSE,
        lexical: BM25 | None = None,
        rrf_k: float = 60.0,
        ranker: FeatureRanker | None = None,
        bm25: Bm25Settings | None = None,
        recommender: Recommender | None = None,
    ) -> None:
        if len(retriever.item_ids) != len(catalogue) or list(retriever.item_ids) != list(
            catalogue.ids
        ):
            raise StageInputError(
                "the retriever's product vectors do not match the catalogue (re-run the "
                "retriever stage, or rebuild the bundle)"
            )
        self.retriever = retriever
        self.reranker = reranker
        self.catalogue = catalogue
        self.candidates = candidates
        self.history_items = history_items
        self.index = VectorIndex(retriever.item_vectors, ann_min_items)
        self.users: dict[str, list[str]] = {}
        if users is not None:
            for key, recent in users[["user_key", "recent"]].itertuples(index=False):
                self.users[str(key)] = list(recent)
        self.info = info or {}
        self.score_pairs = PairScorer(reranker, catalogue)
        self.first_stage = first_stage
        self.rrf_k = rrf_k
        self.ranker = ranker if reranker is None else None  # the cross-encoder comes first
        if lexical is None and (first_stage == HYBRID or self.ranker is not None):
            lexical = BM25.of_fields(catalogue.ids, catalogue.fields, bm25 or Bm25Settings())
        self.lexical = lexical
        self.features = (
            None
            if self.ranker is None or lexical is None
            else FeatureExtractor(catalogue, lexical, retriever.item_prior)
        )
        self.recommender = recommender
        if recommender is not None:
            if list(recommender.index.ids) != list(catalogue.ids):
                raise StageInputError(
                    "the recommender's products do not match the catalogue (re-run the "
                    "recommender stage, or rebuild the bundle)"
                )
            if "user_tower" in recommender.settings.needs():
                recommender.tower = self.user_tower()

    @property
    def reorders(self) -> bool:
        """Does a second stage reorder the first stage's top `candidates`?"""
        return self.reranker is not None or self.ranker is not None

    # -- the steps -----------------------------------------------------------------------

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.retriever.encode(texts, max_len=self.retriever.query_max_len)

    def retrieve(
        self, vectors: np.ndarray, depth: int, allowed: np.ndarray | None = None
    ) -> list[Candidates]:
        hits = self.index.search(vectors, depth, allowed)
        return [[(self.catalogue.ids[p], s) for p, s in row] for row in hits]

    def first_stage_hits(
        self,
        queries: Sequence[str],
        vectors: np.ndarray,
        depth: int,
        allowed: np.ndarray | None = None,
    ) -> list[Candidates]:
        """The retriever's top `depth` per query; in hybrid, the top `depth` of it fused with
        BM25's for the bare query (BM25 reads no history), both read `FUSION_DEPTH` deep."""
        if self.first_stage != HYBRID or self.lexical is None:
            return self.retrieve(vectors, depth, allowed)
        dense = self.retrieve(vectors, max(depth, FUSION_DEPTH), allowed)
        lexical = self.lexical.search(queries, max(depth, FUSION_DEPTH), allowed)
        return [
            reciprocal_rank_fusion([[p for p, _ in d], [p for p, _ in b]], self.rrf_k, depth)
            for d, b in zip(dense, lexical, strict=True)
        ]

    def priors(self, query_vector: np.ndarray, product_ids: Sequence[str]) -> np.ndarray:
        """Retriever cosine of products to a (bare) query: the reranker's prior feature."""
        positions = [self.catalogue.position[p] for p in product_ids]
        return self.retriever.item_vectors[positions] @ query_vector

    def merge(
        self, candidates: Candidates, scores: Sequence[float] | np.ndarray, k: int
    ) -> list[Hit]:
        """Candidates reordered by `scores`, top k."""
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:k]
        return [
            Hit(
                product_id=candidates[i][0],
                title=str(self.catalogue.titles[self.catalogue.position[candidates[i][0]]]),
                score=float(scores[i]),
                retriever_score=float(candidates[i][1]),
            )
            for i in order
        ]

    # -- what callers ask ----------------------------------------------------------------

    def recent(self, user_key: str | None) -> list[str]:
        """A user's latest products (latest last), which personalise search; empty for
        unknown users."""
        return self.users.get(user_key, []) if user_key else []

    def history_text(self, query: str | None, recent: Sequence[str]) -> str:
        titles = [
            str(self.catalogue.titles[self.catalogue.position[p]])
            for p in recent
            if p in self.catalogue.position
        ]
        return query_text(query, titles, self.history_items)

    def candidates_for(
        self,
        queries: Sequence[str],
        k: int = 10,
        recents: Sequence[Sequence[str]] | None = None,
        filters: Filters | None = None,
    ) -> list[tuple[Candidates, list[float]]]:
        """Per query: the retrieved candidates and their reranker priors (the first half of
        `search`; the service sends the pairs to its batching scorer, then `merge`s).

        With `recents` (a user's latest products), retrieval reads the query and those items;
        the reranker's prior always reads the bare query, as it was trained.
        """
        if not len(queries):
            return []
        bare = self.embed_queries(queries)
        vectors = bare
        if recents is not None and any(len(r) for r in recents):
            vectors = self.embed_queries(
                [self.history_text(q, r) for q, r in zip(queries, recents, strict=True)]
            )
        depth = max(k, self.candidates if self.reorders else k)
        found = self.first_stage_hits(queries, vectors, depth, self.catalogue.allowed(filters))
        return [
            (cands, self.priors(vector, [p for p, _ in cands]).tolist() if cands else [])
            for vector, cands in zip(bare, found, strict=True)
        ]

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        recents: Sequence[Sequence[str]] | None = None,
        filters: Filters | None = None,
    ) -> list[list[Hit]]:
        """Top k products per query: retrieve `candidates`, rerank them."""
        return self.rerank(queries, self.candidates_for(queries, k, recents, filters), k)

    def rerank(
        self,
        queries: Sequence[str],
        found: Sequence[tuple[Candidates, list[float]]],
        k: int,
        limit: int | None = None,
    ) -> list[list[Hit]]:
        """Each query's first `limit` candidates (all when None), from `candidates_for`, scored
        in one reranker batch; the top k of them (the first stage's order without a reranker)."""
        heads = [(cands[:limit], priors[:limit]) for cands, priors in found]
        if self.reranker is None:
            return [
                self.merge(cands, self.local_scores(query, cands, priors), k)
                for query, (cands, priors) in zip(queries, heads, strict=True)
            ]
        flat_q, flat_p, flat_prior = [], [], []
        for query, (cands, priors) in zip(queries, heads, strict=True):
            flat_q += [query] * len(cands)
            flat_p += [pid for pid, _ in cands]
            flat_prior += priors
        scores = self.score_pairs(flat_q, flat_p, flat_prior)
        out, at = [], 0
        for cands, _ in heads:
            out.append(self.merge(cands, scores[at : at + len(cands)], k))
            at += len(cands)
        return out

    def local_scores(self, query: str, cands: Candidates, priors: Sequence[float]) -> list[float]:
        """Without a cross-encoder: the feature ranker's scores, else the first stage's."""
        if self.ranker is None or self.features is None or not cands:
            return [s for _, s in cands]
        features = self.features(query, cands, priors, self.ranker.features)
        return self.ranker.score(features).tolist()

    def user_tower(self) -> Tower:
        """The retriever's query tower over customers' recent products: a recommendation
        source (`engine.recommend`)."""
        titles = dict(zip(self.catalogue.ids, self.catalogue.titles, strict=True))
        return user_tower(self.retriever, titles, self.history_items)

    def recommend(
        self,
        user_keys: Sequence[str | None],
        k: int = 10,
        recents: Sequence[Sequence[str]] | None = None,
    ) -> list[list[Hit]]:
        """Next products for each customer (`user_keys`; None: anonymous) and the products
        sent with the request (`recents`), from the served recommender; never one its
        exclusion rule (`recommend.exclude`) leaves out."""
        if self.recommender is None:
            raise StageInputError(
                "this model serves no recommendations (it was trained without purchases)"
            )
        keys = [key if key is not None else f"anonymous-{i}" for i, key in enumerate(user_keys)]
        found = self.recommender.recommend(keys, k, recents)
        return [
            [
                Hit(
                    product_id=pid,
                    title=str(self.catalogue.titles[self.catalogue.position[pid]]),
                    score=score,
                    retriever_score=0.0,
                )
                for pid, score in row
            ]
            for row in found
        ]

    def rank_candidates(
        self, query: str, product_ids: Sequence[str]
    ) -> tuple[Candidates, list[float]]:
        """The given products (duplicates dropped) with their first-stage scores among
        themselves, and their reranker priors for `query`: the first half of `rank`, which
        the service scores in its batching worker."""
        ids = list(dict.fromkeys(product_ids))
        if not ids:
            return [], []
        priors = self.priors(self.embed_queries([query])[0], ids)
        if self.first_stage != HYBRID or self.lexical is None:
            return list(zip(ids, map(float, priors), strict=True)), priors.tolist()
        lexical = self.lexical.scores_of(query, ids)
        fused = dict(
            reciprocal_rank_fusion(
                [order_of(ids, priors, False), order_of(ids, lexical, True)], self.rrf_k
            )
        )
        return [(p, fused[p]) for p in ids], priors.tolist()

    def rank(self, query: str, product_ids: Sequence[str]) -> list[Hit]:
        """Given products reordered for a query (for shops that keep their own retrieval)."""
        found = self.rank_candidates(query, product_ids)
        return self.rerank([query], [found], len(found[0]))[0]

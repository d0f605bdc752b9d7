"""What the feature ranker reads about each (query, candidate): the standard learning-to-rank
signals, computed the same way in training, evaluation and the service.

Every feature is relative to one query's candidate list or to the product, never to the
first stage that found it, so one ranker reorders dense and hybrid candidates alike:
the retriever's cosine and its rank in the list, BM25F's score and rank and each field's own
BM25 score (title, brand, category, attributes, description), how much of the query the
title holds (share of query terms, all of them or not), the query's length, the
product's price and popularity (the retriever's fitted popularity prior, 0 without events).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from shopflow.engine.catalogue import Candidates, Catalogue
from shopflow.models.feature_ranker import FEATURES, PHRASE_FEATURES
from shopflow.models.lexical import BM25

_TERM = re.compile(r"[a-z0-9]+")
_DIGIT = re.compile(r"\d")


def terms(text: str) -> set[str]:
    """Lower-cased alphanumeric terms (a size like "3/4" gives "3" and "4")."""
    return set(_TERM.findall(text.lower()))


def ranks(scores: np.ndarray) -> np.ndarray:
    """1 for the highest score in the list, ties in list order."""
    out = np.empty(len(scores), np.float32)
    out[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return out


class FeatureExtractor:
    """`FEATURES` of a query's candidates over one catalogue (titles tokenised once)."""

    def __init__(
        self, catalogue: Catalogue, lexical: BM25, popularity: np.ndarray | None = None
    ) -> None:
        self.catalogue = catalogue
        self.lexical = lexical
        self.title_terms = [terms(str(t)) for t in catalogue.titles]
        # the titles as BM25 reads them (stemmed, stop words out), in order: phrase features
        self.title_stems = lexical.corpus.tokenizer([str(t) for t in catalogue.titles])
        self.log_price = np.log1p(np.nan_to_num(catalogue.prices, nan=0.0).clip(min=0))
        self.popularity = np.zeros(len(catalogue), np.float32) if popularity is None else popularity

    def __call__(
        self,
        query: str,
        cands: Candidates,
        priors: Sequence[float],
        names: Sequence[str] = FEATURES,
    ) -> np.ndarray:
        """One row per candidate, one column per feature of `names` (any of
        `models.feature_ranker.FEATURES`; `priors`: the candidates' retriever cosines)."""
        ids = [p for p, _ in cands]
        at = [self.catalogue.position[p] for p in ids]
        cosine = np.asarray(priors, np.float32)
        bm25 = self.lexical.scores_of(query, ids).astype(np.float32)
        wanted = terms(query)
        found = np.array([len(wanted & self.title_terms[i]) for i in at], np.float32)
        share = found / max(1, len(wanted))
        columns = {
            "dense_cosine": cosine,
            "dense_rank": ranks(cosine),
            "bm25": bm25,
            "bm25_rank": ranks(bm25),
            "title_term_share": share,
            "title_has_all_terms": (share == 1.0) & (len(wanted) > 0),
            "query_terms": np.full(len(ids), len(wanted), np.float32),
            "log_price": self.log_price[at],
            "popularity": self.popularity[at],
        }
        if any(name.startswith("bm25_") and name not in columns for name in names):
            for field, scores in self.lexical.field_scores_of(query, ids).items():
                columns[f"bm25_{field}"] = scores
            columns["bm25_ratio"] = bm25 / max(float(bm25.max(initial=0.0)), 1e-6)
        if set(PHRASE_FEATURES) & set(names):
            columns.update(self.phrase_features(query, at))
        columns["cosine_gap"] = cosine - cosine.max(initial=0.0)
        return np.column_stack([columns[name] for name in names]).astype(np.float32)

    def phrase_features(self, query: str, at: Sequence[int]) -> dict[str, np.ndarray]:
        """How the query's stems sit in each title: their share, the share of the query's
        adjacent stem pairs found adjacent (a phrase), the share of its numbers (sizes,
        model numbers; -1 when it has none), how many numbers it has, the title's length
        and where the first query stem appears in it (99: nowhere)."""
        stems = self.lexical.corpus.tokenizer([query])[0]
        wanted, pairs = set(stems), set(pairwise(stems))
        numbers = {s for s in wanted if _DIGIT.search(s)}
        rows = []
        for i in at:
            title = self.title_stems[i]
            have = set(title)
            rows.append(
                (
                    len(wanted & have) / max(1, len(wanted)),
                    len(pairs & set(pairwise(title))) / max(1, len(pairs)),
                    len(numbers & have) / len(numbers) if numbers else -1.0,
                    len(numbers),
                    len(title),
                    next((n for n, s in enumerate(title) if s in wanted), 99),
                )
            )
        table = np.asarray(rows, np.float32).reshape(len(at), 6)
        return dict(zip(PHRASE_FEATURES, table.T, strict=True))

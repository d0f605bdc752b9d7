"""Fitting the feature ranker on what it will reorder: the hybrid first stage's top
`ranker.candidates` for each judged train query, labelled by the judgments (a candidate
nobody judged counts as the scale's bottom, as the full-catalogue NDCG counts it).

`ranker.stop_share` of the train queries is held out to stop boosting, so the valid split
stays untouched until the serving mix compares the feature ranker with the other mixes.
"""

from __future__ import annotations

import logging

import numpy as np

from shopflow.core.config import Params
from shopflow.core.progress import Progress
from shopflow.data.tables import Tables, lowest_grade, split_of
from shopflow.engine.fusion import HYBRID
from shopflow.engine.ranking_features import FeatureExtractor
from shopflow.engine.search import Catalogue, SearchEngine
from shopflow.evaluation import ranking
from shopflow.models.bi_encoder import BiEncoder
from shopflow.models.feature_ranker import FEATURES, FeatureRanker, RankingData, labels_of
from shopflow.models.lexical import BM25

log = logging.getLogger(__name__)

MIN_QUERIES = 10  # fewer informative train lists: no ranker (it would learn noise)


def ranking_data(
    engine: SearchEngine,
    extractor: FeatureExtractor,
    qrels: ranking.Qrels,
    lowest: float,
    name: str,
) -> RankingData:
    """The candidate lists of `qrels`' queries; lists whose candidates all have one label
    teach nothing and are left out."""
    queries = list(qrels)
    found = engine.candidates_for(queries, k=engine.candidates)
    features, labels, groups = [], [], []
    progress = Progress(f"feature ranker: {name} lists", len(queries), unit="queries")
    for done, (query, (cands, priors)) in enumerate(zip(queries, found, strict=True), 1):
        grades = np.array([qrels[query].get(p, lowest) for p, _ in cands], float)
        label = labels_of(grades, lowest)
        if len(label) and label.min() < label.max():
            features.append(extractor(query, cands, priors))
            labels.append(label)
            groups.append(len(label))
        progress.update(done)
    if not groups:
        return RankingData(np.empty((0, len(FEATURES)), np.float32), np.empty(0, int), [])
    return RankingData(np.concatenate(features), np.concatenate(labels), groups)


def fit_feature_ranker(
    retriever: BiEncoder, catalogue: Catalogue, lexical: BM25, tables: Tables, params: Params
) -> tuple[FeatureRanker, dict] | None:
    """The fitted ranker and its figures; None (logged) when it is off or has too little to
    learn from."""
    if not params.ranker.enabled:
        log.info("feature ranker: off (ranker.enabled: false)")
        return None
    judged = split_of(tables, "judgments", "train")
    qrels = ranking.qrels_from(judged) if judged is not None else {}
    queries = sorted(qrels)
    order = np.random.default_rng(params.seed).permutation(len(queries))
    n_stop = round(len(queries) * params.ranker.stop_share)
    stop = {queries[i]: qrels[queries[i]] for i in order[:n_stop]}
    train = {queries[i]: qrels[queries[i]] for i in order[n_stop:]}
    engine = SearchEngine(
        retriever,
        None,
        catalogue,
        candidates=params.ranker.candidates,
        first_stage=HYBRID,
        lexical=lexical,
        rrf_k=params.serving.rrf_k,
    )
    extractor = FeatureExtractor(catalogue, lexical, retriever.item_prior)
    lowest = lowest_grade(tables)
    data = {
        name: ranking_data(engine, extractor, part, lowest, name)
        for name, part in (("train", train), ("stop", stop))
    }
    if min(len(d.groups) for d in data.values()) < MIN_QUERIES:
        log.warning(
            "feature ranker: not trained: %d train and %d held-out lists with more than one "
            "label (at least %d each needed)",
            len(data["train"].groups),
            len(data["stop"].groups),
            MIN_QUERIES,
        )
        return None
    return FeatureRanker.fit(data["train"], data["stop"], params.ranker, params.seed)

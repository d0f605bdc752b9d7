"""Choosing BM25's settings on judged queries that are not test queries.

BM25 learns nothing from queries, so every judged train and valid query can score a setting
without leaking into the test split; with thousands of them a setting that looks better is
better. Coordinate ascent over the grids in params `bm25` (k1 and b together, then each
field's weight), twice at most, from params' own settings; a shop without judged non-test
queries keeps params' settings, and the stage's metrics say so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from shopflow.core.config import Bm25Config
from shopflow.data.features import PRODUCT_FIELDS
from shopflow.evaluation import ranking
from shopflow.models.lexical import BM25, Bm25Settings, configured, top_k

log = logging.getLogger(__name__)

Qrels = Mapping[str, Mapping[str, float]]


def mean_ndcg_at_10(bm25: BM25, queries: Sequence[str], qrels: Qrels) -> float:
    """Mean NDCG@10 (linear gains, unjudged = 0) of BM25's top 10 over judged queries: the
    tuning objective, read off the sparse score matrix without building hit lists."""
    scores = bm25.score_matrix(queries)
    total = 0.0
    for i, query in enumerate(queries):
        judged = qrels[query]
        start, end = scores.indptr[i], scores.indptr[i + 1]
        docs, _ = top_k(scores.indices[start:end], scores.data[start:end], 10)
        gains = np.array([judged.get(bm25.product_ids[d], 0.0) for d in docs], float)
        total += ranking.ndcg_at_k(gains, np.fromiter(judged.values(), float), 10)
    return total / max(1, len(queries))


@dataclass(frozen=True)
class TuningGrid:
    """Where `tune` looks: k1 and b values, and the weights each non-title field may take
    (the title's weight stays 1: only the ratios matter)."""

    k1: Sequence[float]
    b: Sequence[float]
    weights: Sequence[float]


def tuned_bm25(
    products: pd.DataFrame, judgments: pd.DataFrame | None, cfg: Bm25Config, seed: int
) -> tuple[BM25, dict]:
    """BM25 over `products` with the settings params `bm25` start from, tuned on the judged
    train and valid queries when `cfg.tune` (a seeded sample of `cfg.max_tuning_queries`)."""
    bm25 = BM25.of_products(products, configured(cfg))
    if not cfg.tune:
        return bm25, {"tuned": False, "reason": "bm25.tune is false"}
    known = None if judgments is None else judgments[judgments["split"] != "test"]
    if known is None or known.empty:
        return bm25, {"tuned": False, "reason": "no judged train or valid queries to tune on"}
    qrels = ranking.qrels_from(known)
    queries = sorted(qrels)
    if len(queries) > cfg.max_tuning_queries:
        picked = np.random.default_rng(seed).choice(len(queries), cfg.max_tuning_queries, False)
        queries = [queries[i] for i in sorted(picked)]
    grid = TuningGrid(cfg.k1_grid, cfg.b_grid, cfg.weight_grid)
    best, trail = tune(bm25, queries, qrels, grid)
    return best, {"tuned": True, **trail}


def tune(
    bm25: BM25,
    queries: Sequence[str],
    qrels: Qrels,
    grid: TuningGrid,
    rounds: int = 2,
) -> tuple[BM25, dict]:
    """BM25 settings with the best mean NDCG@10 over `queries`, by coordinate ascent: (k1, b)
    on their grid with the field weights fixed, then each field's weight on its grid, twice.
    Starts from `bm25`'s settings; returns the best scorer and a trail of what was tried.

    Only fields that hold text in this catalogue are tuned (Home Depot has titles only)."""
    started = time.perf_counter()
    best = bm25
    best_score = mean_ndcg_at_10(bm25, queries, qrels)
    start_score = best_score
    tried = 1
    present = [
        f for f in PRODUCT_FIELDS if f in bm25.corpus.lengths and bm25.corpus.lengths[f].sum() > 0
    ]

    def consider(settings: Bm25Settings) -> None:
        nonlocal best, best_score, tried
        if not any(w > 0 for f, w in settings.weights.items() if f in present):
            return
        candidate = best.over(settings)
        score = mean_ndcg_at_10(candidate, queries, qrels)
        tried += 1
        if score > best_score + 1e-9:
            best, best_score = candidate, score

    for _ in range(rounds):
        before = best_score
        current = best.settings
        for k1 in grid.k1:
            for b in grid.b:
                if (k1, b) != (current.k1, current.b):
                    consider(replace(current, k1=k1, b=b))
        for name in present:
            if name == "title":
                continue
            current = best.settings
            for weight in grid.weights:
                if weight != current.weights.get(name, 0.0):
                    consider(replace(current, weights={**current.weights, name: weight}))
        if best_score <= before + 1e-9:
            break
    trail = {
        "queries": len(queries),
        "ndcg@10_start": round(start_score, 4),
        "ndcg@10_tuned": round(best_score, 4),
        "settings_tried": tried,
        "fields_with_text": present,
    }
    log.info(
        "BM25 tuned on %d judged non-test queries: NDCG@10 %.4f -> %.4f with k1=%g b=%g "
        "weights %s (%d settings tried, %.1fs)",
        len(queries),
        start_score,
        best_score,
        best.settings.k1,
        best.settings.b,
        dict(best.settings.weights),
        tried,
        time.perf_counter() - started,
    )
    return best, trail

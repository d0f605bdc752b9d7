"""Test-split numbers of one model or baseline, per query or per held-out purchase.

Every model stage writes its per-query scores (`<model>/eval/*.parquet`) so that later
comparisons are paired: the reranker against BM25, the zero-shot encoder and the retriever;
the A/B evaluation of challenger against champion. Search is scored here on the judged test
queries (NDCG@10, MRR@10, MAP, Recall@100); recommendations on the held-out purchases in
`evaluation.recommend`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from shopflow.core.config import Params
from shopflow.data.tables import Tables, split_of
from shopflow.evaluation import ranking, significance
from shopflow.models.bi_encoder import BiEncoder

log = logging.getLogger(__name__)

Hits = list[list[tuple[str, float]]]  # per query: (product id, score), best first
SEARCH_DEPTH = 100  # Recall@100
TOP = 10


def test_qrels(tables: Tables) -> dict[str, dict[str, float]]:
    """The judged test queries: query → product → grade (empty without judgments)."""
    judged = split_of(tables, "judgments", "test")
    return {} if judged is None else ranking.qrels_from(judged)


def search_scores(
    qrels: Mapping[str, Mapping[str, float]], queries: Sequence[str], hits: Hits, params: Params
) -> pd.DataFrame:
    """Per-query search metrics of ranked hits (`hits[i]` answers `queries[i]`)."""
    ranked = {q: [pid for pid, _ in h] for q, h in zip(queries, hits, strict=True)}
    return ranking.per_query(qrels, ranked, params.evaluation.relevant_at)


def baseline_search_scores(
    tables: Tables,
    bm25_search: Callable[[list[str]], Hits],
    zero_shot_search: Callable[[list[str]], Hits],
    params: Params,
) -> dict[str, pd.DataFrame]:
    """BM25's and the zero-shot encoder's per-query test scores (none without judgments)."""
    qrels = test_qrels(tables)
    if not qrels:
        return {}
    queries = list(qrels)
    runs = {"bm25": bm25_search(queries), "zero_shot_encoder": zero_shot_search(queries)}
    return {
        f"{name}_search": search_scores(qrels, queries, hits, params) for name, hits in runs.items()
    }


def bi_encoder_scores(
    encoder: BiEncoder, tables: Tables, params: Params
) -> dict[str, pd.DataFrame]:
    """Search test scores of a bi-encoder that has the catalogue indexed (its user tower is
    measured as a recommendation source by the recommender stage)."""
    qrels = test_qrels(tables)
    if not qrels:
        return {}
    queries = list(qrels)
    return {"search": search_scores(qrels, queries, encoder.search(queries, SEARCH_DEPTH), params)}


def summarize(per_query: Mapping[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """Means of every metric column, and how many queries/examples they are over."""
    return {name: {**ranking.means(frame), "n": len(frame)} for name, frame in per_query.items()}


def compare_with(
    per_query: pd.DataFrame,
    others: Mapping[str, Path | pd.DataFrame],
    alpha: float,
    metric: str = "ndcg@10",
) -> dict[str, dict]:
    """Paired tests of `per_query` against each other system's per-query scores (in memory or
    saved), over the queries both answered (a missing file is skipped with a warning)."""
    result = {}
    ours = per_query.set_index("query")[metric]
    for name, scores in others.items():
        if isinstance(scores, Path) and not scores.exists():
            log.warning("no per-query scores at %s: not compared with %s", scores, name)
            continue
        frame = pd.read_parquet(scores) if isinstance(scores, Path) else scores
        other = frame.set_index("query")[metric]
        common = ours.index.intersection(other.index)
        test = significance.paired_test(ours[common].to_numpy(), other[common].to_numpy())
        test["significant"] = bool(test["p_ttest"] < alpha and test["mean_diff"] > 0)
        result[f"vs_{name}"] = test
        log.info(
            "vs %s on %s: %+.4f (%.4f vs %.4f, t-test p=%.2g, Wilcoxon p=%.2g, n=%d)",
            name,
            metric,
            test["mean_diff"],
            test["mean_a"],
            test["mean_b"],
            test["p_ttest"],
            test["p_wilcoxon"],
            test["n"],
        )
    return result

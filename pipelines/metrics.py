"""Ranking and recommendation metrics, per query, so every comparison can be paired.

Written here rather than taken from ranx: ranx is correct but compiles with numba on every
cold start (14 s import + 3 s first call measured here), which every stage and test process
would pay. These are the standard definitions (linear gains, as ranx and trec_eval use by
default) and are cross-checked against scikit-learn's `ndcg_score` in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

Qrels = Mapping[str, Mapping[str, float]]  # query -> product -> graded relevance
Ranking = Mapping[str, Sequence[str]]  # query -> ranked product ids


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2))


def ndcg_at_k(ranked_gains: np.ndarray, all_gains: np.ndarray, k: int) -> float:
    """nDCG@k with linear gains; `all_gains` are the gains of every judged item for the query."""
    ideal = np.sort(all_gains)[::-1][:k]
    idcg = float((ideal * _discounts(len(ideal))).sum())
    if idcg == 0:
        return 0.0
    gains = ranked_gains[:k]
    return float((gains * _discounts(len(gains))).sum() / idcg)


def per_query(qrels: Qrels, ranking: Ranking, relevant_at: float = 1.0) -> pd.DataFrame:
    """nDCG@10, MRR@10, Recall@100 and AP for every judged query (missing runs score 0).

    Binary metrics count an item as relevant when its grade is >= `relevant_at`.
    """
    rows = []
    for query, judged in qrels.items():
        ranked = list(ranking.get(query, ()))
        gains = np.array([judged.get(pid, 0.0) for pid in ranked], dtype=float)
        all_gains = np.array(list(judged.values()), dtype=float)
        relevant = gains >= relevant_at
        n_relevant = int((all_gains >= relevant_at).sum())
        hits = np.flatnonzero(relevant[:10])
        precision_at_hits = np.cumsum(relevant)[relevant] / (np.flatnonzero(relevant) + 1)
        rows.append(
            {
                "query": query,
                "ndcg@10": ndcg_at_k(gains, all_gains, 10),
                "mrr@10": 1.0 / (hits[0] + 1) if len(hits) else 0.0,
                "recall@100": relevant[:100].sum() / n_relevant if n_relevant else 0.0,
                "map": precision_at_hits.sum() / n_relevant if n_relevant else 0.0,
            }
        )
    return pd.DataFrame(rows)


def next_item(
    targets: Sequence[str], recommendations: Sequence[Sequence[str]], k: int = 10
) -> pd.DataFrame:
    """HitRate@k and nDCG@k of a single held-out target per example."""
    rows = []
    for target, recs in zip(targets, recommendations, strict=True):
        top = list(recs[:k])
        rank = top.index(target) + 1 if target in top else 0
        rows.append(
            {f"hit@{k}": float(rank > 0), f"ndcg@{k}": 1 / np.log2(rank + 1) if rank else 0.0}
        )
    return pd.DataFrame(rows)


def qrels_from(judgments: pd.DataFrame) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    for query, pid, rel in judgments[["query", "product_id", "relevance"]].itertuples(index=False):
        qrels.setdefault(query, {})[pid] = float(rel)
    return qrels


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Is system a better than b over the same queries? Paired t-test and Wilcoxon signed-rank.

    The t-test is the IR default (ranx, trec_eval studies); Wilcoxon is reported alongside
    because per-query metric differences are far from normal. Both p-values are two-sided.
    """
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError("a paired test needs two equally long runs over at least 2 queries")
    diff = a - b
    if not diff.any():
        return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_diff": 0.0,
                "p_ttest": 1.0, "p_wilcoxon": 1.0, "n": len(a)}  # fmt: skip
    return {
        "mean_a": round(float(a.mean()), 4),
        "mean_b": round(float(b.mean()), 4),
        "mean_diff": round(float(diff.mean()), 4),
        "p_ttest": float(stats.ttest_rel(a, b).pvalue),
        "p_wilcoxon": float(stats.wilcoxon(a, b).pvalue),
        "n": len(a),
    }

"""Which trained system to serve, chosen on the valid split with latency in the balance.

A cross-encoder earns its place in the served path only by what it adds on queries it was
not trained or tested on: each candidate mix (the retriever alone; the retriever's top
`candidates` reordered by the cross-encoder) is scored on the valid split's judged queries and
timed on single-query searches. Candidates are taken cheapest first; a costlier one replaces
the current choice only when its p50 latency is within `serving.max_p50_ms` and its valid
NDCG@10 is higher with a one-sided paired permutation p below `evaluation.significance`. So
"no cross-encoder" is the answer whenever the reranker does not clearly help or is too slow,
and the test split stays untouched by the choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from shopflow.core.config import Params
from shopflow.data.tables import Tables, split_of
from shopflow.engine.search import Catalogue, SearchEngine
from shopflow.evaluation import ranking
from shopflow.evaluation.ab_test import time_searches
from shopflow.evaluation.significance import permutation_p
from shopflow.evaluation.systems import ModelSystem
from shopflow.models.bi_encoder import BiEncoder
from shopflow.models.cross_encoder import CrossEncoder

log = logging.getLogger(__name__)

RETRIEVER = "retriever"
RERANKER = "retriever+reranker"


@dataclass(frozen=True)
class MixCandidate:
    """One way to serve search: its valid NDCG@10 per query (indexed by query) and its p50."""

    name: str
    ndcg: pd.Series
    p50_ms: float


def choose_mix(
    candidates: Sequence[MixCandidate],
    max_p50_ms: float,
    alpha: float,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """The chosen candidate's name, every candidate's figures and the reason, for the metrics.

    `candidates` are ordered cheapest first; the first is the fallback whatever its latency.
    """
    chosen = candidates[0]
    rows: dict[str, dict] = {
        chosen.name: {
            "valid_ndcg@10": round(float(chosen.ndcg.mean()), 4),
            "p50_ms": round(chosen.p50_ms, 2),
            "n": len(chosen.ndcg),
        }
    }
    reasons = []
    for candidate in candidates[1:]:
        common = chosen.ndcg.index.intersection(candidate.ndcg.index)
        ours, theirs = candidate.ndcg[common], chosen.ndcg[common]
        p = (
            permutation_p(ours.to_numpy(), theirs.to_numpy(), resamples=resamples, seed=seed)
            if len(common)
            else 1.0
        )
        gain = float(ours.mean() - theirs.mean()) if len(common) else 0.0
        rows[candidate.name] = {
            "valid_ndcg@10": round(float(candidate.ndcg.mean()), 4),
            "p50_ms": round(candidate.p50_ms, 2),
            "n": len(candidate.ndcg),
            f"gain_over_{chosen.name}": round(gain, 4),
            "p_value": round(p, 4),
        }
        over_budget = candidate.p50_ms > max_p50_ms
        no_gain = gain <= 0 or p >= alpha
        verdict = (
            f"valid NDCG@10 {gain:+.4f} over {chosen.name} (p={p:.3g}, n={len(common)}) "
            + ("is not a significant gain" if no_gain else "is a significant gain")
            + f" at {alpha:g}; p50 {candidate.p50_ms:.0f} ms is "
            + ("over" if over_budget else "within")
            + f" the budget serving.max_p50_ms={max_p50_ms:g}"
        )
        reasons.append(f"{candidate.name}: {verdict}")
        if not (over_budget or no_gain):
            chosen = candidate
    return {"chosen": chosen.name, "candidates": rows, "reasons": reasons}


def measure_mix(
    retriever: BiEncoder,
    reranker: CrossEncoder,
    catalogue: Catalogue,
    tables: Tables,
    params: Params,
) -> dict | None:
    """Score and time the retriever alone and with the reranker on the valid split, and
    choose; None when the valid split has no judged query to choose on."""
    judged = split_of(tables, "judgments", "valid")
    if judged is None or judged.empty:
        return None
    qrels = ranking.qrels_from(judged)
    queries = list(qrels)
    systems = {
        name: ModelSystem(
            SearchEngine(retriever, model, catalogue, candidates=params.reranker.candidates)
        )
        for name, model in ((RETRIEVER, None), (RERANKER, reranker))
    }
    ndcg = {
        name: ranking.per_query(
            qrels, system.search(queries), params.evaluation.relevant_at
        ).set_index("query")["ndcg@10"]
        for name, system in systems.items()
    }
    timing = time_searches(systems, queries[: params.evaluation.latency_queries])
    decision = choose_mix(
        [MixCandidate(name, ndcg[name], timing[name]["p50_ms"]) for name in systems],
        params.serving.max_p50_ms,
        params.evaluation.significance,
        params.evaluation.resamples,
        params.seed,
    )
    for reason in decision["reasons"]:
        log.info("serving mix: %s", reason)
    log.info("serving mix: %s (chosen on %d valid queries)", decision["chosen"], len(queries))
    return decision

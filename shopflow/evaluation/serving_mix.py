"""Which trained system to serve, chosen on the valid split with latency in the balance.

A serving mix is a first stage (the dense retriever alone, or hybrid: it and BM25 fused by
reciprocal rank, `engine.fusion`) and what reorders its top candidates (`ranker.candidates`
for the feature ranker, `reranker.candidates` for the cross-encoder): nothing,
the feature ranker (`models.feature_ranker`) or the cross-encoder. Each allowed mix
(`serving.first_stage`, `ranker.enabled`, `reranker.serve`) is scored on
the valid split's judged queries and timed on single-query searches. Mixes are taken cheapest
first; another replaces the current choice only when its p50 latency is within
`serving.max_p50_ms` and its valid NDCG@10 is higher: on the mean for the cheap ones (the
hybrid, the feature ranker: a shop's valid split may hold a few dozen queries, on which no
small gain is ever significant), with a one-sided paired permutation p below
`evaluation.significance` for the costly cross-encoder. The test split stays untouched by
the choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from shopflow.core.config import Params
from shopflow.data.tables import Tables, split_of
from shopflow.engine.fusion import DENSE, FIRST_STAGES
from shopflow.engine.search import Catalogue, SearchEngine
from shopflow.evaluation import ranking
from shopflow.evaluation.ab_test import time_searches
from shopflow.evaluation.significance import permutation_p
from shopflow.evaluation.systems import ModelSystem
from shopflow.models.bi_encoder import BiEncoder
from shopflow.models.cross_encoder import CrossEncoder
from shopflow.models.feature_ranker import FeatureRanker
from shopflow.models.lexical import BM25

log = logging.getLogger(__name__)


NONE, LTR, RERANKER = "none", "ltr", "reranker"
FINALS = (NONE, LTR, RERANKER)  # cheapest first


@dataclass(frozen=True)
class Mix:
    """One way to serve search: a first stage, and what reorders its top candidates."""

    first_stage: str  # dense | hybrid
    final: str = NONE  # none | ltr (the feature ranker) | reranker (the cross-encoder)

    @property
    def name(self) -> str:
        return self.first_stage + ("" if self.final == NONE else f"+{self.final}")

    @property
    def rerank(self) -> bool:
        return self.final == RERANKER

    @classmethod
    def named(cls, name: str) -> Mix:
        first_stage, _, final = name.partition("+")
        if first_stage not in FIRST_STAGES or final not in ("", LTR, RERANKER):
            raise ValueError(f"not a serving mix: {name!r}")
        return cls(first_stage, final or NONE)


def allowed_mixes(first_stage: str, serve: str, ranker: bool = True) -> list[Mix]:
    """The mixes `serving.first_stage` (auto | dense | hybrid), `ranker.enabled` and
    `reranker.serve` (auto | always | never) allow, cheapest first: nothing, the feature
    ranker, the cross-encoder after the first stage; dense before hybrid (BM25 over a
    catalogue costs a millisecond or so, the feature ranker less, the cross-encoder hundreds)."""
    stages = FIRST_STAGES if first_stage == "auto" else (first_stage,)
    finals = {
        "auto": (NONE, LTR, RERANKER),
        "always": (RERANKER,),
        "never": (NONE, LTR),
    }[serve]
    return [Mix(s, f) for f in finals if ranker or f != LTR for s in stages]


def fallback_mix(mixes: Sequence[Mix]) -> Mix:
    """With nothing to choose on: the cross-encoder when it may be served (it was trained to
    help), over the dense first stage when allowed (the retriever was trained for it)."""
    return max(mixes, key=lambda m: (m.rerank, m.first_stage == DENSE, m.final == NONE))


@dataclass(frozen=True)
class MixCandidate:
    """One way to serve search: its valid NDCG@10 per query (indexed by query), its p50, and
    whether it is costly (the cross-encoder: hundreds of milliseconds a query on a CPU)."""

    name: str
    ndcg: pd.Series
    p50_ms: float
    costly: bool = False


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
        if candidate.costly:
            no_gain = gain <= 0 or p >= alpha
            judged = ("is not" if no_gain else "is") + f" a significant gain at {alpha:g}"
        else:  # cheap: a mean gain is enough, a few dozen valid queries rarely prove more
            no_gain = gain <= 0
            judged = "is no mean gain" if no_gain else "is a mean gain (cheap: no test needed)"
        verdict = (
            f"valid NDCG@10 {gain:+.4f} over {chosen.name} (p={p:.3g}, n={len(common)}) "
            + judged
            + "; its p50 latency is "
            + ("over" if over_budget else "within")
            + f" the budget serving.max_p50_ms={max_p50_ms:g} (timed on this machine)"
        )
        reasons.append(f"{candidate.name}: {verdict}")
        if not (over_budget or no_gain):
            chosen = candidate
    return {"chosen": chosen.name, "candidates": rows, "reasons": reasons}


def mix_engine(
    mix: Mix,
    retriever: BiEncoder,
    reranker: CrossEncoder | None,
    catalogue: Catalogue,
    params: Params,
    lexical: BM25 | None = None,
    ranker: FeatureRanker | None = None,
) -> SearchEngine:
    """The engine serving `mix` (BM25 indexed by the engine unless `lexical` is given)."""
    return SearchEngine(
        retriever,
        reranker if mix.final == RERANKER else None,
        catalogue,
        # the feature ranker reorders more than the cross-encoder can afford to
        candidates=params.ranker.candidates if mix.final == LTR else params.reranker.candidates,
        first_stage=mix.first_stage,
        lexical=lexical,
        rrf_k=params.serving.rrf_k,
        ranker=ranker if mix.final == LTR else None,
    )


def measure_mix(
    mixes: Sequence[Mix],
    retriever: BiEncoder,
    reranker: CrossEncoder,
    catalogue: Catalogue,
    tables: Tables,
    params: Params,
    lexical: BM25,
    ranker: FeatureRanker | None = None,
) -> dict | None:
    """Score and time each of `mixes` (cheapest first) on the valid split, and choose; None
    when the valid split has no judged query to choose on."""
    judged = split_of(tables, "judgments", "valid")
    if judged is None or judged.empty:
        return None
    qrels = ranking.qrels_from(judged)
    queries = list(qrels)
    systems = {
        mix.name: ModelSystem(
            mix_engine(mix, retriever, reranker, catalogue, params, lexical, ranker)
        )
        for mix in mixes
    }
    ndcg = {
        name: ranking.per_query(
            qrels, system.search(queries), params.evaluation.relevant_at
        ).set_index("query")["ndcg@10"]
        for name, system in systems.items()
    }
    timing = time_searches(systems, queries[: params.evaluation.latency_queries])
    decision = choose_mix(
        [
            MixCandidate(name, ndcg[name], timing[name]["p50_ms"], Mix.named(name).rerank)
            for name in systems
        ],
        params.serving.max_p50_ms,
        params.evaluation.significance,
        params.evaluation.resamples,
        params.seed,
    )
    for reason in decision["reasons"]:
        log.info("serving mix: %s", reason)
    log.info("serving mix: %s (chosen on %d valid queries)", decision["chosen"], len(queries))
    return decision

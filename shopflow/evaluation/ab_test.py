"""The A/B evaluation of a challenger against the champion: the evaluate stage's core.

Both systems answer the same test split (judged queries for search, held-out purchases for
recommendation), so every comparison is paired. Measured: search NDCG@10 / MRR@10 / MAP /
Recall@100, recommendation HitRate@10 / NDCG@10; beyond accuracy (catalogue coverage@10,
exposure Gini, brand exposure vs brand relevance, novelty); NDCG@10 per slice (top category,
head/tail query, queries needing a cold-start product); p95 single-query latency, timed
alternately so that machine load hits both alike. Then a simulated online test
(`interleaving`), the A/B sample size it implies, and `gate.decide`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.evaluation import interleaving, ranking, recommend, significance
from shopflow.evaluation.gate import Guardrail, decide
from shopflow.evaluation.guardrails import beyond_accuracy, guardrails, query_slices
from shopflow.evaluation.heldout import HeldOut
from shopflow.evaluation.systems import TOP, System

log = logging.getLogger(__name__)


def score_system(system: System, split: HeldOut, params: Params) -> dict:
    """Per-query tables and top-10 lists of one system."""
    out: dict = {}
    if split.qrels:
        ranked = system.search(split.queries)
        judged = ranking.judged_only(split.qrels, system.rank_judged(split.qrels), split.lowest)
        out["search"] = ranking.per_query(split.qrels, ranked, params.evaluation.relevant_at).merge(
            judged, on="query"
        )
        out["search"]["judged@10"] = out["search"]["query"].map(
            ranking.judged_share(split.qrels, ranked)
        )
        out["search_lists"] = [ranked[q][:TOP] for q in split.queries]
    if split.purchases is not None:
        lists = system.recommend(split.purchases)
        out["recommend"] = recommend.score_lists(split.purchases, lists, TOP)
        out["recommend_lists"] = [lists.get(u, []) for u in split.purchases.users]
    return out


def time_searches(systems: Mapping[str, System], queries: Sequence[str]) -> dict[str, dict]:
    """p50/p95 milliseconds of a single-query search, systems alternating query by query."""
    timings: dict[str, list[float]] = {name: [] for name in systems}
    for system in systems.values():
        system.search_one(queries[0])  # warm-up: first-call allocations are not latency
    for query in queries:
        for name, system in systems.items():
            started = time.perf_counter()
            system.search_one(query)
            timings[name].append((time.perf_counter() - started) * 1000)
    return {
        name: {
            "p50_ms": float(np.percentile(t, 50)),
            "p95_ms": float(np.percentile(t, 95)),
            "n": len(t),
        }
        for name, t in timings.items()
    }


MIN_JUDGED_IMPRESSIONS = 1000  # fewer logged impressions of judged products: γ not fitted


def click_model(
    tables: dict[str, pd.DataFrame], split: HeldOut, params: Params
) -> interleaving.ClickModel:
    """The simulator's own users; else a PBM fitted on the logs (θ by EM, γ per grade from
    logged impressions of judged products); else the assumed one (see `interleaving`)."""
    if params.ingest.source == "synthetic":
        return interleaving.synthetic_click_model()
    judged = tables.get("judgments")
    pairs = tables.get("pairs")
    max_grade = max(max(j.values()) for j in split.qrels.values())
    if pairs is not None and len(pairs) and pairs["clicked"].any() and judged is not None:
        from shopflow.models.propensity import estimate_propensities

        grades = judged.groupby(["query", "product_id"])["relevance"].mean()
        keys = pd.MultiIndex.from_frame(pairs[["query", "product_id"]])
        matched = grades.reindex(keys).to_numpy()
        known = ~np.isnan(matched)
        if known.sum() >= MIN_JUDGED_IMPRESSIONS:
            try:
                propensity = estimate_propensities(pairs, params.reranker.max_position)
            except StageInputError as exc:
                log.info("no click model from the logs (%s): using the assumed one", exc)
            else:
                return interleaving.fitted_click_model(
                    propensity.to_numpy(),
                    matched[known],
                    pairs["clicked"].to_numpy()[known],
                    pairs["position"].to_numpy()[known],
                )
    return interleaving.assumed_click_model(max_grade)


# -- the comparison ----------------------------------------------------------------------


def primary_metric(params: Params, split: HeldOut) -> tuple[str, str]:
    """(task, column) of the primary metric."""
    choice = params.gate.primary
    if choice == "auto":
        choice = "search_ndcg@10" if split.qrels else "recommend_ndcg@10"
    task, column = choice.split("_", 1)
    if task == "search" and not split.qrels:
        raise StageInputError(f"gate.primary is {choice} but the test split has no judged queries")
    if task == "recommend" and split.purchases is None:
        raise StageInputError(f"gate.primary is {choice} but the test split has no purchases")
    return task, column


def baseline_means(baselines_dir: Path) -> dict:
    out = {}
    for path in sorted((baselines_dir / "eval").glob("*.parquet")):
        out[path.stem] = ranking.means(pd.read_parquet(path))
    return out


def headline(result: dict) -> dict:
    """What `dvc metrics show` lists: the verdict as 1/0 and the numbers behind it."""
    p = result["primary"]
    out = {
        "promote": int(result["verdict"] == "promote"),
        "primary": {
            k: round(p[k], 4) if isinstance(p[k], float) else p[k]
            for k in ("challenger", "champion", "difference", "ci_low", "ci_high", "n")
        },
        "p_value": p["p_value"],
        "guardrails_failed": sum(not g["passed"] for g in result["guardrails"]),
    }
    if result["interleaving"]:
        i = result["interleaving"]
        out["interleaving"] = {
            "win_rate": round(i["win_rate"], 4),
            "ci_low": round(i["ci_low"], 4),
            "ci_high": round(i["ci_high"], 4),
        }
        sessions = result["power"]["sessions_per_arm"]
        out["ab_sessions_per_arm"] = None if math.isinf(sessions) else sessions
    for name, tasks in result["metrics"].items():
        out[name] = tasks
    return out


@dataclass
class Comparison:
    """An A/B evaluation's outcome: the decision file's numbers and the per-query tables."""

    result: dict
    scored: dict[str, dict]


def compare_systems(
    systems: dict[str, System],
    split: HeldOut,
    tables: dict[str, pd.DataFrame],
    params: Params,
    extra_rails: Sequence[Guardrail] = (),
) -> Comparison:
    """Score `systems["challenger"]` and `systems["champion"]` on the held-out split and decide
    (the gate's verdict, reasons, checks and every number behind them). `extra_rails`: checks
    that need no scoring (the privacy budget)."""
    ev = params.evaluation
    scored = {}
    for name, system in systems.items():
        t0 = time.perf_counter()
        scored[name] = score_system(system, split, params)
        log.info(
            "%s scored on %d queries and %d purchases in %.1fs",
            name,
            len(split.qrels),
            0 if split.purchases is None else len(split.purchases),
            time.perf_counter() - t0,
        )
    chal, champ = scored["challenger"], scored["champion"]
    extra = {name: beyond_accuracy(s, split, params) for name, s in scored.items()}
    if split.qrels:
        latency = time_searches(systems, split.queries[: ev.latency_queries])
        slices = query_slices(split, tables, params)
        for name in scored:
            scored[name]["search"] = scored[name]["search"].merge(slices, on="query", how="left")
    else:
        latency = {n: {"p50_ms": 0.0, "p95_ms": 0.0, "n": 0} for n in systems}
        slices = pd.DataFrame()

    task, column = primary_metric(params, split)
    primary = {
        "metric": f"{task}_{column}",
        "confidence": ev.confidence,
        "unit": "customer" if task == "recommend" else "query",
        **significance.compare(
            chal[task][column],
            champ[task][column],
            clusters=chal[task]["cluster"].to_numpy() if task == "recommend" else None,
            confidence=ev.confidence,
            resamples=ev.resamples,
            seed=params.seed,
        ),
    }
    simulated, power = online_test(scored, split, tables, params)
    rails, slice_table = guardrails(
        chal,
        champ,
        extra["challenger"],
        extra["champion"],
        slices,
        latency,
        systems["champion"].kind,
        params,
    )
    decision = decide(primary, simulated, [*rails, *extra_rails], params.gate)
    log.info("decision: %s — %s", decision["verdict"].upper(), "; ".join(decision["reasons"]))
    summary = {
        name: {
            **({"search": ranking.means(s["search"])} if "search" in s else {}),
            **({"recommend": recommend.summary(s["recommend"])} if "recommend" in s else {}),
        }
        for name, s in scored.items()
    }
    result = {
        **decision,
        "primary": primary,
        "interleaving": simulated,
        "power": power,
        "metrics": summary,
        "beyond_accuracy": extra,
        "latency": latency,
        "slices": slice_table,
        "gate": params.gate.model_dump(),
    }
    return Comparison(result, scored)


def online_test(
    scored: dict[str, dict], split: HeldOut, tables: dict[str, pd.DataFrame], params: Params
) -> tuple[dict | None, dict]:
    """Simulated team-draft interleaving of the two top-10 lists, and the sessions per arm an
    A/B test on CTR would need to see the same difference (None, {} without judged queries)."""
    ev = params.evaluation
    if not (split.qrels and ev.interleaving_sessions):
        return None, {}
    model = click_model(tables, split, params)
    lists = {n: dict(zip(split.queries, s["search_lists"], strict=True)) for n, s in scored.items()}
    simulated = interleaving.simulate(
        lists["champion"],
        lists["challenger"],
        split.qrels,
        model,
        sessions=ev.interleaving_sessions,
        confidence=ev.confidence,
        seed=params.seed,
    ).as_dict()
    power = {
        "ctr_champion": simulated["ctr_champion"],
        "ctr_challenger": simulated["ctr_challenger"],
        # inf: no difference to detect
        "sessions_per_arm": significance.sessions_per_arm(
            simulated["ctr_challenger"],
            simulated["ctr_champion"],
            alpha=params.gate.alpha,
            power=ev.power,
        ),
        "alpha": params.gate.alpha,
        "power": ev.power,
        "test": "two-sided two-proportion z-test on sessions with a click (statsmodels)",
    }
    return simulated, power

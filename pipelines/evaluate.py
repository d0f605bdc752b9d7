"""Stage `evaluate`: the A/B evaluation of tonight's challenger against the champion.

Both systems answer the same test split (judged queries for search, held-out purchases for
recommendation), through `engine.SearchEngine`, the code the service runs. The champion is
whatever the registry points to: a promoted model (its bundle from the BentoML store,
re-embedding tonight's catalogue so that models, not catalogue snapshots, are compared) or,
before any promotion, the BM25 + popularity baseline rebuilt from tonight's data.

Measured, per query or per held-out purchase so that every comparison is paired:
search NDCG@10 / MRR@10 / MAP / Recall@100, recommendation HitRate@10 / NDCG@10; beyond
accuracy (catalogue coverage@10, exposure Gini, brand exposure vs brand relevance, novelty);
NDCG@10 per slice (top category, head/tail query, queries needing a cold-start product);
p95 single-query latency, timed alternately so that machine load hits both alike. Then a
simulated online test (`interleaving`), the A/B sample size it implies, and `gate.decide`.

Writes `data/evaluation/` (per-query tables and top-10 lists), `reports/decision.json` (the
verdict, every number, every reason) and `metrics/evaluate.json` (the headline numbers).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import interleaving, significance
from pipelines import metrics as rank_metrics
from pipelines.artifacts import files_hash, staged_dir, write_json, write_parquet
from pipelines.baselines import BM25, popularity_prior, without_history
from pipelines.config import Params
from pipelines.deploy import bundle_settings, git_revision
from pipelines.encoding import device_of
from pipelines.engine import SearchEngine
from pipelines.errors import StageInputError
from pipelines.features import product_text
from pipelines.gate import DECISION, Guardrail, decide
from pipelines.prepare import load_prepared
from pipelines.registry import (
    BASELINE_VERSION,
    Entry,
    Registry,
    champion_bundle,
    now,
    params_hash,
)

log = logging.getLogger(__name__)

IN_DIR = Path("data/prepared")
MODELS = Path("data/models")
OUT_DIR = Path("data/evaluation")
METRICS = Path("metrics/evaluate.json")
DEPTH = 100  # ranking depth scored (Recall@100)
TOP = 10  # what a shopper sees


# -- the systems -------------------------------------------------------------------------


class ModelSystem:
    """A retriever → reranker engine, ranked to depth 100: the reranked candidates first,
    then the retriever's order (so Recall@100 is the retriever's)."""

    kind = "model"

    def __init__(self, engine: SearchEngine) -> None:
        self.engine = engine

    def search(self, queries: Sequence[str]) -> dict[str, list[str]]:
        engine = self.engine
        found = engine.candidates_for(queries, k=DEPTH)
        n_rerank = engine.candidates if engine.reranker is not None else 0
        heads = engine.rerank(queries, found, n_rerank, limit=n_rerank)
        return {
            query: [h.product_id for h in head] + [p for p, _ in cands[n_rerank:]]
            for query, head, (cands, _) in zip(queries, heads, found, strict=True)
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
    entry: Entry | None, products: pd.DataFrame, popular: pd.Series, params: Params
) -> System:
    bundle = champion_bundle(entry)
    if bundle is None:
        return BaselineSystem(products, popular)
    from pipelines.engine import read_bundle_info

    settings = read_bundle_info(bundle)["settings"]
    prior = popularity_prior(popular, products["product_id"].tolist())
    engine = SearchEngine.assemble(bundle / "retriever", bundle / "reranker", products, settings,
                                   device_of(params), item_prior=prior)  # fmt: skip
    return ModelSystem(engine)


# -- what is measured --------------------------------------------------------------------


@dataclass
class HeldOut:
    products: pd.DataFrame
    qrels: dict[str, dict[str, float]]
    histories: list[list[str]]
    targets: list[str]
    exclude: list[list[str]] | None
    popular: pd.Series

    @property
    def queries(self) -> list[str]:
        return list(self.qrels)


def held_out(tables: dict[str, pd.DataFrame], params: Params, baselines_dir: Path) -> HeldOut:
    judged = tables.get("judgments")
    qrels = {}
    if judged is not None and (judged["split"] == "test").any():
        qrels = rank_metrics.qrels_from(judged[judged["split"] == "test"])
    sequences = tables.get("sequences")
    histories, targets = [], []
    if sequences is not None and (sequences["split"] == "test").any():
        test = sequences[sequences["split"] == "test"]
        histories = [list(h) for h in test["history"]]
        targets = test["product_id"].tolist()
    if not qrels and not targets:
        raise StageInputError(
            "the test split has neither judged queries nor held-out purchases: nothing to "
            "evaluate a challenger on (check prepare.test_days and the source's judgments)"
        )
    popular_path = baselines_dir / "popularity.parquet"
    if not popular_path.exists():
        raise StageInputError(f"{popular_path}: missing; run the baselines stage first")
    popular = pd.read_parquet(popular_path).set_index("product_id")["score"]
    exclude = histories if params.evaluation.exclude_history else None
    return HeldOut(tables["products"], qrels, histories, targets, exclude, popular)


def score_system(system: System, split: HeldOut, params: Params) -> dict:
    """Per-query tables and top-10 lists of one system."""
    out: dict = {}
    if split.qrels:
        ranking = system.search(split.queries)
        out["search"] = rank_metrics.per_query(split.qrels, ranking, params.evaluation.relevant_at)
        out["search_lists"] = [ranking[q][:TOP] for q in split.queries]
    if split.targets:
        lists = system.recommend(split.histories, split.exclude)
        out["recommend"] = rank_metrics.next_item(split.targets, lists, TOP)
        out["recommend_lists"] = lists
    return out


def time_searches(systems: dict[str, System], queries: Sequence[str]) -> dict[str, dict]:
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
        name: {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)),
               "n": len(t)}
        for name, t in timings.items()
    }  # fmt: skip


def query_slices(split: HeldOut, tables: dict[str, pd.DataFrame], params: Params) -> pd.DataFrame:
    """Per judged query: its top category, head/tail, and whether it needs a cold product."""
    products = split.products
    top_of = dict(
        zip(products["product_id"],
            products.get("category", pd.Series([""] * len(products))).fillna("").astype(str)
            .str.split(">").str[0].str.strip().replace("", "(none)"), strict=True)
    )  # fmt: skip
    pairs = tables.get("pairs")
    sequences = tables.get("sequences")
    warm: set[str] = set()
    counts: Counter = Counter()
    if pairs is not None and len(pairs):
        train = pairs[pairs["split"] == "train"]
        warm |= set(train.loc[train["label"] > 0, "product_id"])
        counts = Counter(train.drop_duplicates(["session_id", "query"])["query"])
    if sequences is not None and len(sequences):
        warm |= set(sequences.loc[sequences["split"] == "train", "product_id"])
    has_logs = bool(warm)
    has_categories = any(v != "(none)" for v in top_of.values())
    rows = []
    for query, judged in split.qrels.items():
        relevant = [p for p, g in judged.items() if g >= params.evaluation.relevant_at]
        tops = Counter(top_of.get(p, "(none)") for p in relevant)
        rows.append(
            {
                "query": query,
                "category": (
                    (tops.most_common(1)[0][0] if tops else "(no relevant product)")
                    if has_categories else None
                ),
                "traffic": (
                    ("head" if counts[query] >= params.evaluation.head_min_count else "tail")
                    if counts else None
                ),
                "products": (
                    ("cold-start" if any(p not in warm for p in relevant) else "warm")
                    if has_logs else None
                ),
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


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
        from pipelines.clicks import estimate_propensities

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
                    propensity.to_numpy(), matched[known], pairs["clicked"].to_numpy()[known],
                    pairs["position"].to_numpy()[known],
                )  # fmt: skip
    return interleaving.assumed_click_model(max_grade)


def beyond_accuracy(scored: dict, split: HeldOut, params: Params) -> dict:
    products = split.products
    ids = products["product_id"].tolist()
    out: dict = {}
    if "search_lists" in scored:
        lists = scored["search_lists"]
        brands = products.get("brand", pd.Series([None] * len(products))).fillna("(none)")
        brand_of = dict(zip(products["product_id"], brands, strict=True))
        relevant = Counter(
            p for judged in split.qrels.values() for p, g in judged.items()
            if g >= params.evaluation.relevant_at
        )  # fmt: skip
        exposure_shares = rank_metrics.group_shares(rank_metrics.exposure(lists, TOP), brand_of)
        merit_shares = rank_metrics.group_shares(pd.Series(relevant, dtype=float), brand_of)
        out["search"] = {
            "coverage@10": rank_metrics.coverage(lists, len(ids), TOP),
            "exposure_gini": rank_metrics.exposure_gini(lists, ids, TOP),
            # None: a catalogue without brands has no brand exposure to compare
            "brand_disparity": rank_metrics.disparity(exposure_shares, merit_shares)
            if (brands != "(none)").any()
            else None,
            "brand_exposure_top5": exposure_shares.head(5).round(4).to_dict(),
        }
    if "recommend_lists" in scored:
        lists = scored["recommend_lists"]
        out["recommend"] = {
            "coverage@10": rank_metrics.coverage(lists, len(ids), TOP),
            "exposure_gini": rank_metrics.exposure_gini(lists, ids, TOP),
            "novelty": rank_metrics.novelty(lists, split.popular, TOP),
        }
    return out


# -- the comparison ----------------------------------------------------------------------


def primary_metric(params: Params, split: HeldOut) -> tuple[str, str]:
    """(task, column) of the primary metric."""
    choice = params.gate.primary
    if choice == "auto":
        choice = "search_ndcg@10" if split.qrels else "recommend_ndcg@10"
    task, column = choice.split("_", 1)
    if task == "search" and not split.qrels:
        raise StageInputError(f"gate.primary is {choice} but the test split has no judged queries")
    if task == "recommend" and not split.targets:
        raise StageInputError(f"gate.primary is {choice} but the test split has no purchases")
    return task, column


def guardrails(
    chal: dict, champ: dict, extra_chal: dict, extra_champ: dict, slices: pd.DataFrame,
    latency: dict, champion_kind: str, params: Params,
) -> tuple[list[Guardrail], dict]:  # fmt: skip
    m = params.gate.margins
    ev = params.evaluation
    rails: list[Guardrail] = []
    slice_table: dict = {}

    def per_query(name: str, a: pd.Series, b: pd.Series, margin: float, note: str = "") -> None:
        p = significance.worse_by_more_than(a, b, margin, resamples=ev.resamples,
                                            seed=params.seed) if len(a) >= 2 else None  # fmt: skip
        rails.append(Guardrail(name, float(a.mean()), float(b.mean()), margin, p_worse=p,
                               note=note))  # fmt: skip

    if "search" in chal:
        per_query("search recall@100", chal["search"]["recall@100"], champ["search"]["recall@100"],
                  m.recall_at_100)  # fmt: skip
        for column in ("category", "traffic", "products"):
            if slices[column].isna().all():
                continue
            for value, rows in slices.groupby(column).groups.items():
                a = chal["search"].loc[rows, "ndcg@10"]
                b = champ["search"].loc[rows, "ndcg@10"]
                key = f"{column}={value}"
                slice_table[key] = {"n": len(rows), "challenger": round(float(a.mean()), 4),
                                    "champion": round(float(b.mean()), 4),
                                    "gated": len(rows) >= ev.min_slice_queries}  # fmt: skip
                if len(rows) >= ev.min_slice_queries:
                    per_query(f"slice {key} ndcg@10", a, b, m.slice_ndcg_at_10,
                              note=f"{len(rows)} queries")  # fmt: skip
        rails.append(Guardrail("search coverage@10", extra_chal["search"]["coverage@10"],
                               extra_champ["search"]["coverage@10"], m.coverage))  # fmt: skip
        if extra_chal["search"]["brand_disparity"] is not None:
            rails.append(Guardrail("brand exposure disparity",
                                   extra_chal["search"]["brand_disparity"],
                                   extra_champ["search"]["brand_disparity"], m.brand_disparity,
                                   higher_is_better=False))  # fmt: skip
        baseline = champion_kind == "baseline"
        rails.append(
            Guardrail(
                "search p95 latency ms", latency["challenger"]["p95_ms"],
                latency["champion"]["p95_ms"], np.inf if baseline else m.latency,
                higher_is_better=False, relative=not baseline, limit=m.max_p95_latency_ms,
                note="the BM25 baseline is not a latency reference: absolute limit only"
                if baseline else "",
            )
        )  # fmt: skip
    if "recommend" in chal:
        per_query("recommend hit@10", chal["recommend"]["hit@10"], champ["recommend"]["hit@10"],
                  m.recommend_hit_at_10)  # fmt: skip
        rails.append(Guardrail("recommend coverage@10", extra_chal["recommend"]["coverage@10"],
                               extra_champ["recommend"]["coverage@10"], m.coverage))  # fmt: skip
    return rails, slice_table


def baseline_means(baselines_dir: Path) -> dict:
    out = {}
    for path in sorted((baselines_dir / "eval").glob("*.parquet")):
        out[path.stem] = rank_metrics.means(pd.read_parquet(path))
    return out


def run(
    params: Params, in_dir: Path = IN_DIR, models_dir: Path = MODELS, out_dir: Path = OUT_DIR,
    metrics: Path = METRICS, decision_path: Path = DECISION,
) -> dict:  # fmt: skip
    started = time.perf_counter()
    ev = params.evaluation
    tables = load_prepared(in_dir)
    split = held_out(tables, params, models_dir / "baselines")
    if not (models_dir / "retriever" / "config.json").exists():
        raise StageInputError(f"{models_dir / 'retriever'}: no challenger; run the retriever stage")
    registry = Registry(params.promote.registry)
    entry = registry.champion()
    champion_label = (
        f"#{entry.id} {entry.version}" if entry
        else "BM25 + popularity baseline (empty registry: the first champion)"
    )  # fmt: skip
    log.info("champion: %s", champion_label)
    device = device_of(params)
    systems: dict[str, System] = {
        "challenger": ModelSystem(SearchEngine.assemble(
            models_dir / "retriever", models_dir / "reranker", split.products,
            bundle_settings(params), device)),
        "champion": champion_system(entry, split.products, split.popular, params),
    }  # fmt: skip
    scored = {}
    for name, system in systems.items():
        t0 = time.perf_counter()
        scored[name] = score_system(system, split, params)
        log.info("%s scored on %d queries and %d purchases in %.1fs", name, len(split.qrels),
                 len(split.targets), time.perf_counter() - t0)  # fmt: skip
    chal, champ = scored["challenger"], scored["champion"]
    extra = {name: beyond_accuracy(s, split, params) for name, s in scored.items()}
    latency = (time_searches(systems, split.queries[: ev.latency_queries]) if split.qrels else
               {n: {"p50_ms": 0.0, "p95_ms": 0.0, "n": 0} for n in systems})  # fmt: skip
    slices = query_slices(split, tables, params) if split.qrels else pd.DataFrame()
    if split.qrels:
        for name in scored:
            scored[name]["search"] = scored[name]["search"].merge(slices, on="query", how="left")

    task, column = primary_metric(params, split)
    primary = {
        "metric": f"{task}_{column}",
        "confidence": ev.confidence,
        **significance.compare(chal[task][column], champ[task][column],
                               confidence=ev.confidence, resamples=ev.resamples, seed=params.seed),
    }  # fmt: skip
    simulated = None
    power: dict = {}
    if split.qrels and ev.interleaving_sessions:
        model = click_model(tables, split, params)
        lists = {n: dict(zip(split.queries, s["search_lists"], strict=True))
                 for n, s in scored.items()}  # fmt: skip
        simulated = interleaving.simulate(
            lists["champion"], lists["challenger"], split.qrels, model,
            sessions=ev.interleaving_sessions, confidence=ev.confidence, seed=params.seed,
        ).as_dict()  # fmt: skip
        power = {
            "ctr_champion": simulated["ctr_champion"],
            "ctr_challenger": simulated["ctr_challenger"],
            "sessions_per_arm": significance.sessions_per_arm(  # inf: no difference to detect
                simulated["ctr_challenger"], simulated["ctr_champion"], alpha=params.gate.alpha,
                power=ev.power),
            "alpha": params.gate.alpha, "power": ev.power,
            "test": "two-sided two-proportion z-test on sessions with a click (statsmodels)",
        }  # fmt: skip
    rails, slice_table = guardrails(chal, champ, extra["challenger"], extra["champion"], slices,
                                    latency, systems["champion"].kind, params)  # fmt: skip
    decision = decide(primary, simulated, rails, params.gate)
    log.info("decision: %s — %s", decision["verdict"].upper(), "; ".join(decision["reasons"]))

    summary = {
        name: {t: rank_metrics.means(s[t]) for t in ("search", "recommend") if t in s}
        for name, s in scored.items()
    }
    result = {
        **decision,
        "created_at": now(),
        "champion": {"entry": entry.id if entry else None,
                     "version": entry.version if entry else BASELINE_VERSION,
                     "kind": systems["champion"].kind, "label": champion_label},
        "challenger": {
            "retriever": files_hash(models_dir / "retriever", "*.safetensors"),
            "reranker": files_hash(models_dir / "reranker", "*.safetensors")
            if (models_dir / "reranker").exists() else None,
        },
        "data_hash": files_hash(in_dir, "*.parquet"),
        "params_hash": params_hash(params.model_dump(mode="json", by_alias=True)),
        "git_revision": git_revision(),
        "primary": primary,
        "interleaving": simulated,
        "power": power,
        "metrics": summary,
        "beyond_accuracy": extra,
        "latency": latency,
        "slices": slice_table,
        "baselines": baseline_means(models_dir / "baselines"),
        "gate": params.gate.model_dump(),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    with staged_dir(out_dir) as staging:
        for name, s in scored.items():
            for t in ("search", "recommend"):
                if t in s:
                    write_parquet(s[t], staging / f"{name}_{t}.parquet")
            if "search_lists" in s:
                write_parquet(pd.DataFrame({"query": split.queries, "top10": s["search_lists"]}),
                              staging / f"{name}_search_top10.parquet")  # fmt: skip
    write_json(decision_path, result)
    write_json(metrics, headline(result))
    return result


def headline(result: dict) -> dict:
    """What `dvc metrics show` lists: the verdict as 1/0 and the numbers behind it."""
    p = result["primary"]
    out = {
        "promote": int(result["verdict"] == "promote"),
        "primary": {k: round(p[k], 4) if isinstance(p[k], float) else p[k]
                    for k in ("challenger", "champion", "difference", "ci_low", "ci_high", "n")},
        "p_value": p["p_value"],
        "guardrails_failed": sum(not g["passed"] for g in result["guardrails"]),
        "latency_p95_ms": {n: round(v["p95_ms"], 1) for n, v in result["latency"].items()},
    }  # fmt: skip
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

"""What a challenger must not make worse: per-slice quality, exposure and latency.

`query_slices` labels every judged test query (top category, head/tail, cold-start product),
`beyond_accuracy` measures who gets shown (catalogue coverage, exposure Gini, brand exposure
against brand relevance, novelty), and `guardrails` turns both, with Recall@100,
recommendation HitRate@10 and p95 latency, into the gate's `Guardrail`s.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from shopflow.core.config import Params
from shopflow.evaluation import ranking, significance
from shopflow.evaluation.gate import Guardrail
from shopflow.evaluation.heldout import HeldOut
from shopflow.evaluation.systems import TOP


def query_slices(split: HeldOut, tables: dict[str, pd.DataFrame], params: Params) -> pd.DataFrame:
    """Per judged query: its top category, head/tail, and whether it needs a cold product."""
    products = split.products
    top_of = dict(
        zip(
            products["product_id"],
            products.get("category", pd.Series([""] * len(products)))
            .fillna("")
            .astype(str)
            .str.split(">")
            .str[0]
            .str.strip()
            .replace("", "(none)"),
            strict=True,
        )
    )
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
                    if has_categories
                    else None
                ),
                "traffic": (
                    ("head" if counts[query] >= params.evaluation.head_min_count else "tail")
                    if counts
                    else None
                ),
                "products": (
                    ("cold-start" if any(p not in warm for p in relevant) else "warm")
                    if has_logs
                    else None
                ),
            }
        )
    return pd.DataFrame(rows)


def beyond_accuracy(scored: dict, split: HeldOut, params: Params) -> dict:
    products = split.products
    ids = products["product_id"].tolist()
    out: dict = {}
    if "search_lists" in scored:
        lists = scored["search_lists"]
        brands = products.get("brand", pd.Series([None] * len(products))).fillna("(none)")
        brand_of = dict(zip(products["product_id"], brands, strict=True))
        relevant = Counter(
            p
            for judged in split.qrels.values()
            for p, g in judged.items()
            if g >= params.evaluation.relevant_at
        )
        exposure_shares = ranking.group_shares(ranking.exposure(lists, TOP), brand_of)
        merit_shares = ranking.group_shares(pd.Series(relevant, dtype=float), brand_of)
        out["search"] = {
            "coverage@10": ranking.coverage(lists, len(ids), TOP),
            "exposure_gini": ranking.exposure_gini(lists, ids, TOP),
            # None: a catalogue without brands has no brand exposure to compare
            "brand_disparity": ranking.disparity(exposure_shares, merit_shares)
            if (brands != "(none)").any()
            else None,
            "brand_exposure_top5": exposure_shares.head(5).round(4).to_dict(),
        }
    if "recommend_lists" in scored:
        lists = scored["recommend_lists"]
        out["recommend"] = {
            "coverage@10": ranking.coverage(lists, len(ids), TOP),
            "exposure_gini": ranking.exposure_gini(lists, ids, TOP),
            "novelty": ranking.novelty(lists, split.popular, TOP),
        }
    return out


def guardrails(
    chal: dict,
    champ: dict,
    extra_chal: dict,
    extra_champ: dict,
    slices: pd.DataFrame,
    latency: dict,
    champion_kind: str,
    params: Params,
) -> tuple[list[Guardrail], dict]:
    m = params.gate.margins
    ev = params.evaluation
    rails: list[Guardrail] = []
    slice_table: dict = {}

    def per_query(
        name: str,
        a: pd.Series,
        b: pd.Series,
        margin: float,
        note: str = "",
        clusters: pd.Series | None = None,
    ) -> None:
        p = (
            significance.worse_by_more_than(
                a,
                b,
                margin,
                clusters=None if clusters is None else clusters.to_numpy(),
                resamples=ev.resamples,
                seed=params.seed,
            )
            if len(a) >= 2
            else None
        )
        rails.append(
            Guardrail(name, float(a.mean()), float(b.mean()), margin, p_worse=p, note=note)
        )

    if "search" in chal:
        per_query(
            "search recall@100",
            chal["search"]["recall@100"],
            champ["search"]["recall@100"],
            m.recall_at_100,
        )
        for column in ("category", "traffic", "products"):
            if slices[column].isna().all():
                continue
            for value, rows in slices.groupby(column).groups.items():
                a = chal["search"].loc[rows, "ndcg@10"]
                b = champ["search"].loc[rows, "ndcg@10"]
                key = f"{column}={value}"
                slice_table[key] = {
                    "n": len(rows),
                    "challenger": round(float(a.mean()), 4),
                    "champion": round(float(b.mean()), 4),
                    "gated": len(rows) >= ev.min_slice_queries,
                }
                if len(rows) >= ev.min_slice_queries:
                    per_query(
                        f"slice {key} ndcg@10",
                        a,
                        b,
                        m.slice_ndcg_at_10,
                        note=f"{len(rows)} queries",
                    )
        rails.append(
            Guardrail(
                "search coverage@10",
                extra_chal["search"]["coverage@10"],
                extra_champ["search"]["coverage@10"],
                m.coverage,
            )
        )
        if extra_chal["search"]["brand_disparity"] is not None:
            rails.append(
                Guardrail(
                    "brand exposure disparity",
                    extra_chal["search"]["brand_disparity"],
                    extra_champ["search"]["brand_disparity"],
                    m.brand_disparity,
                    higher_is_better=False,
                )
            )
        baseline = champion_kind == "baseline"
        rails.append(
            Guardrail(
                "search p95 latency ms",
                latency["challenger"]["p95_ms"],
                latency["champion"]["p95_ms"],
                np.inf if baseline else m.latency,
                higher_is_better=False,
                relative=not baseline,
                limit=m.max_p95_latency_ms,
                note="the BM25 baseline is not a latency reference: absolute limit only"
                if baseline
                else "",
                timed=True,
            )
        )
    if "recommend" in chal:
        per_query(
            "recommend hit@10",
            chal["recommend"]["hit@10"],
            champ["recommend"]["hit@10"],
            m.recommend_hit_at_10,
            note="customers resampled",
            clusters=chal["recommend"]["cluster"],
        )
        rails.append(
            Guardrail(
                "recommend coverage@10",
                extra_chal["recommend"]["coverage@10"],
                extra_champ["recommend"]["coverage@10"],
                m.coverage,
            )
        )
    return rails, slice_table


def privacy_guardrail(params: Params, challenger: dict | None, champion: dict | None) -> list:
    """With `privacy.dp.enabled`, the challenger's spent ε must be within the budget; a
    challenger trained without DP has spent an unbounded ε and fails. `challenger` and
    `champion`: the retriever's privacy records (None: trained without DP). None with DP off:
    privacy is then not gated."""
    dp = params.privacy.dp
    if not dp.enabled:
        return []

    def spent(record: dict | None) -> float:
        return float(record["epsilon_spent"]) if record else np.inf

    return [
        Guardrail(
            "privacy ε spent",
            spent(challenger),
            spent(champion),
            np.inf,
            higher_is_better=False,
            limit=dp.epsilon,
            note="user-level DP-SGD of the retriever (privacy.dp): ε within the budget",
        )
    ]

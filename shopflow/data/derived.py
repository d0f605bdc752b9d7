"""What the models learn from, derived from the validated tables (the prepare stage's core).

- `pairs`: one row per (session, query, shown product): position kept for position-bias
  correction; label 0 shown-not-clicked, 1 click, 2 add to cart, 3 purchase.
- `histories`: per session, the products of the user's earlier sessions (most recent
  `history_length`): what the query tower may append to a query.
- `sequences`: one row per purchase: that history and the purchased product, for next-item
  recommendation.
- `users`: per user, the latest `history_length` products interacted with and every product
  bought, over all splits: what the service personalises and filters with.
- `interactions`: every click, add-to-cart and purchase with its split, over the whole
  window (history included): what the recommenders and customer profiles read
  (`data.profiles`), and the exclusion rule it implies (`recommend.exclude`).
- `corpus`: the shop's own text (products + training queries) for pretrain-adapt.

Every example takes its labels only from events of its own split.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from shopflow.core.config import Params
from shopflow.data.features import attribute_text
from shopflow.data.profiles import exclusion_policy, interactions
from shopflow.data.splits import HISTORY, SPLITS, split_by_time, split_judgments, time_boundaries

LABELS = {"click": 1, "add_to_cart": 2, "purchase": 3}


@dataclass
class Prepared:
    tables: dict[str, pd.DataFrame]
    boundaries: dict[str, str]
    metrics: dict[str, object]
    corpus: list[str]

    @property
    def recommend(self) -> dict | None:
        """The exclusion rule recommendations follow, and why (None without events)."""
        value = self.metrics.get("recommend")
        return value if isinstance(value, dict) else None


def click_pairs(events: pd.DataFrame) -> pd.DataFrame:
    """Shown products with their best outcome, per (split, session, query, product)."""
    searched = events[events["query"].notna()]
    key = ["split", "session_id", "query", "product_id"]
    shown = searched[searched["event_type"] == "impression"]
    shown = shown.sort_values("ts", kind="stable").drop_duplicates(key, keep="first")
    outcomes = searched[searched["event_type"].isin(list(LABELS))]
    best = (
        outcomes.assign(label=outcomes["event_type"].map(LABELS))
        .groupby(key, sort=False)["label"]
        .max()
        .rename("label")
    )
    pairs = shown.join(best, on=key).fillna({"label": 0})
    pairs["label"] = pairs["label"].astype("int8")
    pairs["clicked"] = pairs["label"] > 0
    columns = ["split", "ts", "session_id", "user_key", "query", "product_id", "position"]
    if "propensity" in pairs and pairs["propensity"].notna().any():
        columns.append("propensity")  # measured by the service's randomised swaps
    return pairs[[*columns, "clicked", "label"]].reset_index(drop=True)


def session_histories(events: pd.DataFrame, history_length: int) -> pd.DataFrame:
    """For each session: the products the user interacted with in *earlier* sessions.

    The session's own interactions are left out: the clicks and add-to-cart of the product
    bought would hand the answer to the model. One row per session with a non-empty history,
    the most recent product last.
    """
    acts = events[events["event_type"].isin(list(LABELS))].sort_values(
        ["user_key", "ts"], kind="stable"
    )
    rows = []
    for user, group in acts.groupby("user_key", sort=True):
        history: dict[str, None] = {}  # products of finished sessions, in recency order
        session: str | None = None
        current: list[str] = []
        for sess, product in group[["session_id", "product_id"]].itertuples(index=False):
            if sess != session:
                for item in current:
                    history.pop(item, None)
                    history[item] = None
                session, current = sess, []
                if history:
                    rows.append((sess, user, list(history)[-history_length:]))
            current.append(product)
    return pd.DataFrame(rows, columns=["session_id", "user_key", "history"])


def user_profiles(events: pd.DataFrame, history_length: int) -> pd.DataFrame:
    """Per user: the most recent distinct products interacted with (latest last) and the
    products bought (what recommendations leave out)."""
    acts = events[events["event_type"].isin(list(LABELS))].sort_values(
        ["user_key", "ts"], kind="stable"
    )
    rows = []
    for user, group in acts.groupby("user_key", sort=True):
        recent = list(dict.fromkeys(reversed(group["product_id"].tolist())))[:history_length]
        bought = group.loc[group["event_type"] == "purchase", "product_id"]
        rows.append((user, recent[::-1], sorted(set(bought))))
    return pd.DataFrame(rows, columns=["user_key", "recent", "purchased"])


def purchase_sequences(events: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """One row per purchase made with a known history: (history, purchased product)."""
    purchases = events.loc[
        events["event_type"] == "purchase", ["split", "ts", "session_id", "product_id"]
    ]
    joined = purchases.merge(histories, on="session_id", how="inner", sort=False)
    joined = joined.sort_values(["user_key", "ts"], kind="stable").reset_index(drop=True)
    return joined[["split", "ts", "user_key", "history", "product_id"]]


def domain_corpus(
    products: pd.DataFrame, pairs: pd.DataFrame | None, judgments: pd.DataFrame | None
) -> list[str]:
    """The shop's own language for masked-LM adaptation: product text and *training* queries.

    Queries of the valid and test splits are left out, so pretraining never sees them. Lines
    are de-duplicated and sorted, so the corpus file (pretrain's only data dependency) is the
    same whenever the catalogue and the training query log are the same.
    """
    lines: set[str] = set()
    for row in products.itertuples(index=False):
        parts = [row.title, row.brand, row.category, attribute_text(row.attributes)]
        lines.add(" | ".join(str(p) for p in parts if isinstance(p, str) and p))
        if isinstance(row.description, str) and row.description.strip():
            lines.add(row.description.strip())
    for frame in (pairs, judgments):
        if frame is not None and len(frame):
            lines.update(frame.loc[frame["split"] == "train", "query"].dropna().unique())
    return sorted(line.replace("\n", " ").strip() for line in lines if line and line.strip())


def derive_tables(tables: dict[str, pd.DataFrame], params: Params) -> Prepared:
    """The pure core: validated tables in, splits and examples out."""
    out: dict[str, pd.DataFrame] = {"products": tables["products"]}
    metrics: dict[str, object] = {}
    boundaries: dict[str, str] = {}
    if "events" in tables:
        bounds = time_boundaries(params)
        boundaries = {k: v.isoformat() for k, v in bounds.items()}
        events = tables["events"].assign(split=lambda f: split_by_time(f["ts"], bounds))
        pairs = click_pairs(events)
        histories = session_histories(events, params.prepare.history_length)
        sequences = purchase_sequences(events, histories)
        out["pairs"], out["sequences"], out["histories"] = pairs, sequences, histories
        out["users"] = user_profiles(events, params.prepare.history_length)
        out["interactions"] = acts = interactions(events)
        recommend = exclusion_policy(acts, bounds, params.recommend)
        metrics["recommend"] = recommend
        metrics["events"] = (
            events["split"].value_counts().reindex([HISTORY, *SPLITS], fill_value=0).to_dict()
        )
        metrics["pairs"] = {
            s: {
                "rows": int((pairs["split"] == s).sum()),
                "queries": int(pairs.loc[pairs["split"] == s, "query"].nunique()),
                "click_rate": round(float(pairs.loc[pairs["split"] == s, "clicked"].mean()), 4)
                if (pairs["split"] == s).any()
                else 0.0,
            }
            for s in SPLITS
        }
        metrics["sequences"] = (
            sequences["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict()
        )
    if "judgments" in tables:
        judged = split_judgments(tables["judgments"], params)
        out["judgments"] = judged
        metrics["judgments"] = {
            s: {
                "rows": int((judged["split"] == s).sum()),
                "queries": int(judged.loc[judged["split"] == s, "query"].nunique()),
                "mean_relevance": round(
                    float(judged.loc[judged["split"] == s, "relevance"].mean()), 4
                )
                if (judged["split"] == s).any()
                else 0.0,
            }
            for s in SPLITS
        }
    corpus = domain_corpus(tables["products"], out.get("pairs"), out.get("judgments"))
    metrics["corpus_lines"] = len(corpus)
    return Prepared(out, boundaries, metrics, corpus)

"""What shoppers did in a window, as rows a drift check can compare between windows.

Pure functions from the contract's events and products (any source) to one long table, one
row per search, per interaction (click or purchase) and per session, with NaN wherever a
feature does not apply to the row's kind. Evidently compares each column over its non-null
values, so one table carries features of different grains. Rates per position (CTR) are
counts, not rows: `position_ctr`.

Every feature is defined so that its value on the reference window is an honest estimate of
what a no-drift day looks like: the out-of-vocabulary rate counts a word as known only when
it is in the catalogue or was searched on at least two different days of the reference, so
that one-off words are unknown in both windows alike; a product is "new" for
`new_product_days` after its launch, on any day.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

WORD = re.compile(r"[^\W_]+")
INTERACTIONS = ("click", "purchase")
NUMERIC = (
    "query_chars",
    "query_words",
    "query_oov",
    "click_position",
    "click_price",
    "purchase_price",
    "basket_size",
)
CATEGORICAL = ("no_click", "click_category", "purchase_category", "new_product")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """Words a model trained on a window knows: its catalogue's, and query words searched on
    at least `min_days` days of the window.

    A reference query is judged against the window without its own day (leave one day out),
    so that its words are as likely to be unknown as tomorrow's: otherwise every word of the
    reference would count as known and the reference rate would be biased low.
    """

    catalogue: frozenset[str]
    days_of: dict[str, frozenset[dt.date]]
    min_days: int = 2

    @classmethod
    def of(cls, products: pd.DataFrame, searches: pd.DataFrame, min_days: int = 2) -> Vocabulary:
        catalogue: set[str] = set()
        for column in ("title", "brand", "category", "description"):
            if column in products:
                for text in products[column].dropna().astype(str):
                    catalogue.update(words(text))
        days_of: dict[str, set[dt.date]] = {}
        for query, day in zip(searches["query"].astype(str), searches["day"], strict=True):
            for word in set(words(query)):
                days_of.setdefault(word, set()).add(day)
        return cls(frozenset(catalogue), {w: frozenset(d) for w, d in days_of.items()}, min_days)

    def known(self, word: str, day: dt.date | None = None) -> bool:
        if word in self.catalogue:
            return True
        days = self.days_of.get(word, frozenset())
        return len(days) - (day in days) >= self.min_days

    def oov_share(self, text: str, day: dt.date | None = None) -> float:
        tokens = words(text)
        return sum(not self.known(t, day) for t in tokens) / len(tokens) if tokens else 0.0

    def to_json(self) -> dict:
        return {
            "catalogue": sorted(self.catalogue),
            "days_of": {w: sorted(map(str, d)) for w, d in sorted(self.days_of.items())},
            "min_days": self.min_days,
        }

    @classmethod
    def from_json(cls, raw: dict) -> Vocabulary:
        days_of = {
            w: frozenset(dt.date.fromisoformat(d) for d in days)
            for w, days in raw["days_of"].items()
        }
        return cls(frozenset(raw["catalogue"]), days_of, int(raw["min_days"]))


@dataclass(frozen=True)
class PriceLevels:
    """The median log price of each category in a catalogue.

    Prices are compared relative to their category's level in the reference catalogue: a
    shop's prices span orders of magnitude across categories, and a price rise in two of
    them would drown in that spread if compared raw.
    """

    levels: dict[str, float]

    @classmethod
    def of(cls, products: pd.DataFrame) -> PriceLevels:
        if "category" not in products or "price" not in products:
            return cls({})
        priced = products.assign(log_price=log_price(products["price"]))
        medians = priced.dropna(subset=["category", "log_price"]).groupby("category")
        return cls({str(c): float(v) for c, v in medians["log_price"].median().items()})

    def relative(self, category: pd.Series, prices: pd.Series) -> pd.Series:
        """log10 price over the category's reference level; NaN for unknown categories."""
        level = category.astype(object).map(self.levels).astype(float)
        return prices - level


@dataclass(frozen=True)
class Norms:
    """What a model trained on the reference window knows: its words and its price levels.
    The current window's features are measured against the reference's norms."""

    vocabulary: Vocabulary
    prices: PriceLevels

    @classmethod
    def of(cls, products: pd.DataFrame, searches: pd.DataFrame) -> Norms:
        return cls(Vocabulary.of(products, searches), PriceLevels.of(products))

    def to_json(self) -> dict:
        return {"vocabulary": self.vocabulary.to_json(), "price_levels": self.prices.levels}

    @classmethod
    def from_json(cls, raw: dict) -> Norms:
        return cls(Vocabulary.from_json(raw["vocabulary"]), PriceLevels(raw["price_levels"]))


def log_price(price: pd.Series) -> pd.Series:
    return np.log10(1 + pd.to_numeric(price, errors="coerce").astype(float))


def with_day(events: pd.DataFrame) -> pd.DataFrame:
    return events.assign(day=events["ts"].dt.tz_convert("UTC").dt.date)


def searches(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (session, query): the query and how the shopper reacted to its results."""
    queried = events[events["query"].notna() & (events["query"].astype(str) != "")]
    if queried.empty:
        return pd.DataFrame(columns=["day", "session_id", "query", "clicked", "click_position"])
    keys = ["session_id", "query"]
    first = queried.groupby(keys, sort=False)["ts"].min().reset_index()
    first["day"] = first["ts"].dt.tz_convert("UTC").dt.date
    clicks = queried[queried["event_type"] == "click"]
    first_click = clicks.groupby(keys)["position"].min().rename("click_position")
    out = first.merge(first_click, on=keys, how="left")
    out["clicked"] = out["click_position"].notna()
    out["click_position"] = pd.to_numeric(out["click_position"], errors="coerce").astype(float)
    return out[["day", "session_id", "query", "clicked", "click_position"]]


def top_category(category: pd.Series) -> pd.Series:
    return category.astype("string").str.split(">").str[0].str.strip()


def interactions(
    events: pd.DataFrame,
    products: pd.DataFrame,
    new_product_days: int,
    prices: PriceLevels | None = None,
) -> pd.DataFrame:
    """Clicks and purchases with what was interacted with: top category, price (relative to
    its category's reference level when `prices` knows it), newness."""
    chosen = events[events["event_type"].isin(INTERACTIONS)][["day", "event_type", "product_id"]]
    columns = ["product_id", "title", "category", "price", "first_seen"]
    catalogue = products[[c for c in columns if c in products]].drop_duplicates("product_id")
    out = chosen.merge(catalogue, on="product_id", how="left")
    out["top_category"] = top_category(out["category"]) if "category" in out else pd.NA
    out["log_price"] = log_price(out["price"]) if "price" in out else np.nan
    if prices is not None and prices.levels and "category" in out:
        out["log_price"] = prices.relative(out["category"], out["log_price"])
    if "first_seen" in out and out["first_seen"].notna().any():
        launched = pd.to_datetime(out["first_seen"], utc=True).dt.date
        age = (pd.to_datetime(out["day"]) - pd.to_datetime(launched)).dt.days
        labels = np.where(age < new_product_days, "new", "established").astype(object)
        out["new_product"] = np.where(age.isna(), np.array(None, dtype=object), labels)
    else:
        out["new_product"] = None
    return out


def sessions(events: pd.DataFrame) -> pd.DataFrame:
    """One row per session with a purchase: the basket size (products bought)."""
    bought = events[events["event_type"] == "purchase"]
    out = (
        bought.groupby("session_id")
        .agg(ts=("ts", "min"), basket_size=("product_id", "nunique"))
        .reset_index()
    )
    out["day"] = out["ts"].dt.tz_convert("UTC").dt.date
    return out


def feature_rows(
    events: pd.DataFrame, products: pd.DataFrame, norms: Norms, new_product_days: int
) -> pd.DataFrame:
    """The long table of behaviour features (see the module docstring) of `events`."""
    events = with_day(events)
    found = searches(events)
    queries = found["query"].astype(str)
    search_rows = pd.DataFrame(
        {
            "day": found["day"],
            "kind": "search",
            "query": found["query"].astype(str),
            "query_chars": found["query"].astype(str).str.len().astype(float),
            "query_words": found["query"].astype(str).map(lambda q: len(words(q))).astype(float),
            "query_oov": [
                norms.vocabulary.oov_share(q, d) for q, d in zip(queries, found["day"], strict=True)
            ],
            "no_click": np.where(found["clicked"], "clicked", "no click"),
            "click_position": found["click_position"],
        }
    )
    chosen = interactions(events, products, new_product_days, norms.prices)
    is_click = chosen["event_type"] == "click"
    interaction_rows = pd.DataFrame(
        {
            "day": chosen["day"],
            "kind": chosen["event_type"],
            "click_category": chosen["top_category"].where(is_click),
            "purchase_category": chosen["top_category"].where(~is_click),
            "click_price": chosen["log_price"].where(is_click),
            "purchase_price": chosen["log_price"].where(~is_click),
            "new_product": chosen["new_product"],
            "item": chosen.get("title"),
        }
    )
    baskets = sessions(events)
    session_rows = pd.DataFrame(
        {"day": baskets["day"], "kind": "basket", "basket_size": baskets["basket_size"]}
    )
    rows = pd.concat([search_rows, interaction_rows, session_rows], ignore_index=True)
    for column in NUMERIC:
        rows[column] = pd.to_numeric(rows.get(column), errors="coerce").astype(float)
    for column in CATEGORICAL:
        rows[column] = rows.get(column).astype(object).where(rows.get(column).notna(), None)
    for column in ("query", "item"):
        rows[column] = rows[column].astype(object).where(rows[column].notna(), None)
    return rows[["day", "kind", "query", "item", *NUMERIC, *CATEGORICAL]]


def position_ctr(events: pd.DataFrame, positions: int) -> pd.DataFrame:
    """Impressions and clicks at result positions 1..`positions` of searches (and overall)."""
    ranked = events[events["position"].notna() & events["query"].notna()]
    ranked = ranked[pd.to_numeric(ranked["position"]) <= positions]
    shown = ranked[ranked["event_type"] == "impression"].groupby("position").size()
    clicked = ranked[ranked["event_type"] == "click"].groupby("position").size()
    table = pd.DataFrame({"impressions": shown, "clicks": clicked}).fillna(0).astype(int)
    table = table.reindex(range(1, positions + 1), fill_value=0)
    table.index = [f"ctr@{p}" for p in table.index]
    table.loc["ctr"] = table.sum()
    return table


def in_days(frame: pd.DataFrame, days: Iterable) -> pd.DataFrame:
    wanted = set(days)
    return frame[frame["day"].isin(wanted)]

"""What the recommendation mix's ranker reads about each (customer, candidate product):
every source's score and its rank among that source's top candidates, and what the customer
did with the product (purchases, interaction weight, days since, whether a re-order is due)
and how much they did overall. Computed the same way in training, evaluation and serving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shopflow.models.recommenders import UserProfiles

ABSENT_RANK = 10_000.0  # rank feature of a product outside a source's top candidates
NEVER = 100_000.0  # "days since" feature of a product the customer never touched


@dataclass
class Candidates:
    """Each customer's candidate products (catalogue positions) and their features."""

    users: list[str]
    products: list[np.ndarray]
    features: list[np.ndarray]


def feature_names(sources: Sequence[str]) -> tuple[str, ...]:
    """The mix ranker's features, in order, for a mix of `sources`."""
    per_source = [f"{s}_{kind}" for s in sources for kind in ("score", "rank")]
    return (
        *per_source,
        "purchases",
        "weight",
        "days_since",
        "purchase_interval_ratio",
        "profile_size",
    )


def due_ratio(days_since: np.ndarray, first_since: np.ndarray, bought: np.ndarray) -> np.ndarray:
    """Time since the last interaction over the customer's mean time between purchases of
    the product (about 1: a re-order is due); NaN below two purchases (both +1-shifted
    "days since" as `UserProfiles` stores them)."""
    interval = (first_since - days_since) / np.maximum(bought - 1, 1)
    out = np.full(len(days_since), np.nan, np.float64)
    known = (bought >= 2) & (interval > 0)
    out[known] = (days_since[known] - 1) / interval[known]
    return out


def features_of(
    profiles: UserProfiles,
    sources: Sequence[str],
    tops: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
) -> Candidates:
    """Each customer's candidates (the union of the sources' `tops`, catalogue positions;
    -1 is no product) with their `feature_names(sources)` features."""
    purchases = profiles.purchases.toarray()
    weight = profiles.weight.toarray()
    since = profiles.days_since.toarray()
    first = profiles.first_days_since.toarray()
    size = np.asarray(profiles.seen.sum(axis=1)).ravel()
    products, features = [], []
    for row in range(len(profiles)):
        union = np.unique(np.concatenate([tops[s][row][tops[s][row] >= 0] for s in sources]))
        columns = []
        for name in sources:
            where = {p: r for r, p in enumerate(tops[name][row], start=1) if p >= 0}
            rank = np.array([where.get(p, ABSENT_RANK) for p in union], np.float32)
            columns += [scores[name][row, union], rank]
        days = since[row, union]
        bought = purchases[row, union]
        columns += [
            bought,
            weight[row, union],
            np.where(days > 0, days - 1, NEVER),
            due_ratio(days, first[row, union], bought),
            np.full(len(union), size[row]),
        ]
        products.append(union)
        features.append(np.column_stack(columns).astype(np.float32))
    return Candidates(list(profiles.users), products, features)

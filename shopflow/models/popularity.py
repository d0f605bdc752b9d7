"""Behavioural baselines: what shoppers interact with most, and what they buy next.

- popularity: interactions in the training split, weighted click 1, add to cart 2,
  purchase 3; also the prior the retriever adds to its recommendations;
- item-to-item co-occurrence: products bought after one another by the same user
  (history → next purchase), normalised by the neighbour's popularity so that best-sellers
  do not drown every list.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Sequence
from operator import itemgetter

import numpy as np
import pandas as pd

CO_WINDOW = 5  # how many of the most recent history items count as co-occurring
NEIGHBOURS = 50


def popularity(pairs: pd.DataFrame, sequences: pd.DataFrame) -> pd.Series:
    """Interaction-weighted counts per product in the training split, highest first."""
    train_pairs = pairs[(pairs["split"] == "train") & (pairs["label"] > 0)]
    score = train_pairs.groupby("product_id")["label"].sum().astype(float)
    bought = (
        sequences.loc[sequences["split"] == "train", "product_id"].value_counts().astype(float) * 3
    )
    return (
        score.add(bought, fill_value=0).sort_values(ascending=False, kind="stable").rename("score")
    )


def popularity_prior(popular: pd.Series, product_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Popularity on a [0, 1] log scale per product (0 for never-interacted products): the
    prior the retriever adds to recommendations, with a weight fitted on the valid split."""
    counts = popular.reindex(pd.Index(product_ids), fill_value=0.0).to_numpy(float)
    top = np.log1p(counts.max()) if len(counts) and counts.max() > 0 else 1.0
    return (np.log1p(counts) / top).astype(np.float32)


def cooccurrence(sequences: pd.DataFrame, popular: pd.Series) -> pd.DataFrame:
    """Top neighbours per item: count(item, next purchase) / sqrt(popularity of the neighbour)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for history, target in sequences.loc[
        sequences["split"] == "train", ["history", "product_id"]
    ].itertuples(index=False):
        for item in list(history)[-CO_WINDOW:]:
            if item != target:
                counts[item][target] += 1
    rows = []
    for item, neighbours in counts.items():
        scored = [(n, c / np.sqrt(popular.get(n, 1.0) + 1.0)) for n, c in neighbours.items()]
        for neighbour, score in sorted(scored, key=lambda x: -x[1])[:NEIGHBOURS]:
            rows.append((item, neighbour, score))
    return pd.DataFrame(rows, columns=["product_id", "neighbour", "score"])


class CoOccurrenceRecommender:
    """Sum the neighbour scores of the recent history; fill up with popular items."""

    def __init__(self, table: pd.DataFrame, popular: pd.Series) -> None:
        self.neighbours: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for item, neighbour, score in table[["product_id", "neighbour", "score"]].itertuples(
            index=False
        ):
            self.neighbours[item].append((neighbour, score))
        self.popular = list(popular.index[:200])

    def recommend(self, history: Sequence[str], k: int = 10) -> list[str]:
        scores: dict[str, float] = defaultdict(float)
        for item in list(history)[-CO_WINDOW:]:
            for neighbour, score in self.neighbours.get(item, ()):
                scores[neighbour] += score
        # the k best, ties in first-seen order (what Counter.most_common does)
        ranked = [n for n, _ in heapq.nlargest(k, scores.items(), key=itemgetter(1))]
        return (ranked + [p for p in self.popular if p not in set(ranked)])[:k]


def without_history(recs: Sequence[str], history: Sequence[str], k: int = 10) -> list[str]:
    seen = set(history)
    return [r for r in recs if r not in seen][:k]

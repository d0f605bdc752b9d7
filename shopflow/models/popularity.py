"""Popularity in the training split, the search features' prior: interactions weighted click
1, add to cart 2, purchase 3, and its [0, 1] log scale. (The recommendation baselines, with
recency and the whole history, are `models.recommenders`.)"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


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
    feature ranker's popularity feature, kept with the retriever's product vectors."""
    counts = popular.reindex(pd.Index(product_ids), fill_value=0.0).to_numpy(float)
    top = np.log1p(counts.max()) if len(counts) and counts.max() > 0 else 1.0
    return (np.log1p(counts) / top).astype(np.float32)

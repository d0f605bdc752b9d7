"""Hybrid retrieval: BM25 and the dense retriever fused by reciprocal rank.

The two first stages fail on different queries: BM25 on vocabulary the shop's titles do not
use, the dense retriever on exact model numbers, sizes and rare brand names. Reciprocal-rank
fusion (Cormack et al., 2009) adds 1 / (k + rank) over the lists a product appears in. It
reads ranks only, so a BM25 score and a cosine need no calibration against each other, and
its one knob `k` (60 in the paper, `serving.rrf_k` here) damps the weight of the very top
ranks. Whether the shop gets the hybrid or the dense list alone is decided on the valid split
(`evaluation.serving_mix`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DENSE = "dense"
HYBRID = "hybrid"
FIRST_STAGES = (DENSE, HYBRID)
# Both lists are read at least this deep, so the fused top k is the same whatever k is asked
# (up to this depth): a search box's top 10 is the evaluation's top 10 of 100.
FUSION_DEPTH = 100


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], k: float = 60.0, depth: int | None = None
) -> list[tuple[str, float]]:
    """(product id, fused score) best first, the top `depth`; ties keep first appearance."""
    fused: dict[str, float] = {}
    for ranked in rankings:
        for rank, product_id in enumerate(ranked, start=1):
            fused[product_id] = fused.get(product_id, 0.0) + 1.0 / (k + rank)
    best = sorted(fused.items(), key=lambda item: -item[1])
    return best if depth is None else best[:depth]


def order_of(product_ids: Sequence[str], scores: np.ndarray, positive_only: bool) -> list[str]:
    """`product_ids` sorted by descending `scores` (stable); with `positive_only`, the ones
    scoring 0 or less left out, as BM25 leaves out products sharing no word with the query."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return [product_ids[i] for i in order if not positive_only or scores[i] > 0]

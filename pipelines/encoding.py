"""Turning text into vectors with an encoder folder, and exact nearest-neighbour search.

Uses sentence-transformers (mean pooling over the transformer's token states, as
all-MiniLM-L6-v2 was trained). A plain transformer folder, such as the pretrain-adapt output,
gets mean pooling too. Search is an exact inner product over normalised vectors: on a
catalogue of thousands it is faster than building any ANN index.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pipelines.encoders import quiet_transformers

log = logging.getLogger(__name__)


def load_encoder(path: str, device: str = "cpu", max_seq_len: int = 64):
    quiet_transformers()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device)
    model.max_seq_length = max_seq_len
    return model


def encode(model, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text."""
    vectors = model.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True,
        convert_to_numpy=True, show_progress_bar=False,
    )  # fmt: skip
    return vectors.astype(np.float32, copy=False)


def top_k(
    queries: np.ndarray, items: np.ndarray, item_ids: Sequence[str], k: int = 100
) -> list[list[tuple[str, float]]]:
    """Exact top-k by inner product (cosine on normalised vectors), in chunks of 1,024 queries."""
    ids = np.asarray(item_ids)
    k = min(k, len(ids))
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(queries), 1024):
        scores = queries[start : start + 1024] @ items.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, cand in zip(scores, part, strict=True):
            order = cand[np.argsort(-row[cand], kind="stable")]
            results.append([(ids[i], float(row[i])) for i in order])
    return results

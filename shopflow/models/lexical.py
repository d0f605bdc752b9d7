"""BM25 over product text: the lexical baseline every model must beat, the retriever's
source of hard negatives, and the lexical half of hybrid retrieval (`engine.fusion`).

`bm25s` (a maintained, sparse-matrix BM25) does the work: fast to index and to query, with
English stop words removed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from shopflow.core.artifacts import write_parquet


class BM25:
    """BM25 search over product text."""

    def __init__(self, product_ids: Sequence[str], texts: Sequence[str]) -> None:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG on import

        self.product_ids = np.asarray(product_ids)
        self.position = {str(pid): i for i, pid in enumerate(self.product_ids)}
        self.index = bm25s.BM25()
        self.index.index(
            bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False
        )

    @staticmethod
    def tokens(queries: Sequence[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)

    def search(
        self, queries: Sequence[str], k: int = 100, allowed: np.ndarray | None = None
    ) -> list[list[tuple[str, float]]]:
        """The top k products per query with a positive score, among `allowed` (a boolean
        mask over the products) when given."""
        k = min(k, len(self.product_ids))
        mask = None if allowed is None else allowed.astype(np.float32)
        docs, scores = self.index.retrieve(
            self.tokens(queries), k=k, show_progress=False, n_threads=1, weight_mask=mask
        )
        return [
            [(self.product_ids[d], float(s)) for d, s in zip(row_d, row_s, strict=True) if s > 0]
            for row_d, row_s in zip(docs, scores, strict=True)
        ]

    def scores_of(self, query: str, product_ids: Sequence[str]) -> np.ndarray:
        """BM25 scores of the given products (in the index) for one query."""
        terms = self.tokens([query])[0]
        if not terms:  # only stop words (or nothing): no product matches any term
            return np.zeros(len(product_ids), np.float64)
        everything = self.index.get_scores(terms)
        return np.asarray([everything[self.position[p]] for p in product_ids], np.float64)

    def save(self, folder: Path) -> None:
        self.index.save(str(folder))
        write_parquet(
            pd.DataFrame({"product_id": self.product_ids}), folder / "product_ids.parquet"
        )

"""What an engine searches and answers: the catalogue, filters on it, candidate lists and hits.

Its own module so that the engine's parts (the search engine, the ranking features) share
these types without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shopflow.data.features import product_fields, product_text

Candidates = list[tuple[str, float]]  # (product id, first-stage score), best first


@dataclass(frozen=True)
class Hit:
    product_id: str
    title: str
    score: float  # what the list is ordered by: the reranker's, else the first stage's
    retriever_score: float  # the first stage's: cosine (dense) or fused reciprocal rank (hybrid)


@dataclass(frozen=True)
class Filters:
    """A category (matches its subcategories: "Garden" matches "Garden > Hoses") and a price
    range, inclusive."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.category, self.min_price, self.max_price))


class Catalogue:
    """The products a shop serves, in the order of the retriever's vectors."""

    def __init__(self, products: pd.DataFrame) -> None:
        self.ids = products["product_id"].astype(str).to_numpy()
        self.titles = products["title"].astype(str).to_numpy()
        column = products.get("category", pd.Series([None] * len(products)))
        self.categories = column.fillna("").astype(str).to_numpy()
        price = products.get("price", pd.Series([np.nan] * len(products)))
        self.prices = pd.to_numeric(price, errors="coerce").to_numpy(float)
        self.texts = product_text(products)  # what the encoders read
        self.fields = product_fields(products)  # what BM25F reads
        self.position = {pid: i for i, pid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, product_ids: Sequence[str]) -> list[int]:
        return [self.position[p] for p in product_ids if p in self.position]

    def unknown(self, product_ids: Sequence[str]) -> list[str]:
        return [p for p in product_ids if p not in self.position]

    def allowed(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean mask of the products passing `filters` (None when there are none)."""
        if not filters:
            return None
        mask = np.ones(len(self), bool)
        if filters.category is not None:
            wanted = filters.category.strip().lower()
            lower = np.char.lower(self.categories.astype(str))
            mask &= (lower == wanted) | np.char.startswith(lower, wanted + " >")
        if filters.min_price is not None:
            mask &= self.prices >= filters.min_price  # unknown prices (NaN) never pass
        if filters.max_price is not None:
            mask &= self.prices <= filters.max_price
        return mask

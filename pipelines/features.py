"""Product and query text as every model sees it: BM25, the encoders and the service.

One definition, so that offline evaluation, training and serving cannot drift apart.
"""

from __future__ import annotations

import json

import pandas as pd

MAX_DESCRIPTION_CHARS = 300


def attribute_text(attributes: object) -> str:
    """'colour grey material oak' from the JSON attributes column."""
    if not isinstance(attributes, str) or not attributes:
        return ""
    return " ".join(f"{k} {v}" for k, v in json.loads(attributes).items())


def product_text(
    products: pd.DataFrame, description_chars: int = MAX_DESCRIPTION_CHARS
) -> list[str]:
    """Title | brand | category | attributes | the start of the description."""
    texts = []
    for row in products.itertuples(index=False):
        description = (
            row.description[:description_chars] if isinstance(row.description, str) else ""
        )
        parts = (row.title, row.brand, row.category, attribute_text(row.attributes), description)
        texts.append(" | ".join(str(p) for p in parts if isinstance(p, str) and p))
    return texts

"""Product and query text as every model sees it: BM25, the encoders and the service.

One definition, so that offline evaluation, training and serving cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pandas as pd

MAX_DESCRIPTION_CHARS = 300
# The fields of a product that lexical search indexes apart (BM25F, `models.lexical`).
PRODUCT_FIELDS = ("title", "brand", "category", "attributes", "description")


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


def product_fields(products: pd.DataFrame) -> dict[str, list[str]]:
    """Each of `PRODUCT_FIELDS` as one text per product ("" where the product has none);
    category paths keep their words ("Garden > Hoses" gives "Garden Hoses")."""

    def column(name: str) -> list[str]:
        values = products[name] if name in products else pd.Series([None] * len(products))
        return [v if isinstance(v, str) else "" for v in values]

    return {
        "title": column("title"),
        "brand": column("brand"),
        "category": [c.replace(">", " ") for c in column("category")],
        "attributes": [attribute_text(a) for a in column("attributes")],
        "description": column("description"),
    }


def query_text(query: str | None, recent_titles: Sequence[str] = (), max_items: int = 3) -> str:
    """The query tower's input: the query, then the titles of the user's most recent items.

    With no query (recommendation) it is the recent titles alone, so one tower serves search
    and recommendation.
    """
    query = (query or "").strip()
    recent = [t for t in list(recent_titles)[-max_items:] if t] if max_items else []
    if not recent:
        return query
    history = "recent: " + " ; ".join(reversed(recent))  # most recent first: kept by truncation
    return f"{query} | {history}" if query else history


def history_texts(
    histories: Sequence[Sequence[str]], titles: Mapping[str, str], history_items: int
) -> list[str]:
    """The query tower's input for recommendation: the titles of each history's latest items."""
    return [query_text(None, [titles.get(p, "") for p in h], history_items) for h in histories]


def titles_of(products: pd.DataFrame) -> dict[str, str]:
    """Product id → title."""
    return dict(zip(products["product_id"], products["title"], strict=True))

"""Generic graded judgments (CSV/TSV/parquet/JSON lines): query, product text, relevance.

`ingest.mapping` maps contract names to the file's columns, e.g. for Home Depot
`{query: search_term, product_id: product_uid, title: product_title}`. Without a product id
column a stable id is derived from the product text. `ingest.options.relevance_scale: [lo, hi]`
declares the source scale (validate checks it); otherwise the observed range is recorded.
A pair rated several times is merged at ingest by `ingest.options.repeated_judgments`
(`shopflow.data.repeated_judgments`); a per-rating variance column maps as
`relevance_variance`.
"""

from __future__ import annotations

import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import SourceError
from shopflow.data.contract import Tables, stable_product_id
from shopflow.data.sources.files import apply_mapping, read_table, require_rows

PRODUCT_COLUMNS = ("product_id", "title", "description", "brand", "category", "price")
JUDGMENT_COLUMNS = ("query", "product_id", "relevance", "relevance_variance")
WANTED = ("query", "relevance", "relevance_variance", *PRODUCT_COLUMNS)


def with_product_ids(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Fill `product_id` from the product text where the source has none."""
    if "title" not in frame.columns:
        raise SourceError(f"{origin}: a product title column is required (map it as `title`)")
    if "product_id" in frame.columns and frame["product_id"].notna().all():
        return frame
    text = frame.reindex(columns=["title", "brand", "description"])
    derived = [
        stable_product_id(
            str(t), b if isinstance(b, str) else None, d if isinstance(d, str) else None
        )
        for t, b, d in text.itertuples(index=False)
    ]
    frame = frame.copy()
    if "product_id" in frame.columns:
        frame["product_id"] = frame["product_id"].fillna(pd.Series(derived, index=frame.index))
    else:
        frame["product_id"] = derived
    return frame


def declared_scale(params: Params, observed: pd.Series) -> tuple[float, float] | None:
    scale = params.ingest.options.get("relevance_scale")
    if scale is not None:
        if not (isinstance(scale, list | tuple) and len(scale) == 2):
            raise SourceError("ingest.options.relevance_scale must be a [low, high] pair")
        return float(scale[0]), float(scale[1])
    values = pd.to_numeric(observed, errors="coerce").dropna()
    return (float(values.min()), float(values.max())) if len(values) else None


def read(params: Params) -> Tables:
    cfg = params.ingest
    origin = cfg.path
    frame = read_table(cfg.path, cfg.encoding)
    frame = apply_mapping(frame, cfg.mapping, origin, WANTED)
    require_rows(frame, origin, "judgment")
    frame = with_product_ids(frame, origin)
    for col in ("query", "relevance"):
        if col not in frame.columns:
            raise SourceError(
                f"{origin}: missing column {col!r} (found: {', '.join(frame.columns)}); "
                f"map it with ingest.mapping.{col}"
            )
    products = frame[[c for c in PRODUCT_COLUMNS if c in frame.columns]]
    products = products.drop_duplicates("product_id")  # keeps the file's line numbers
    return Tables(
        products=products,
        judgments=frame[[c for c in JUDGMENT_COLUMNS if c in frame.columns]],
        relevance_scale=declared_scale(params, frame["relevance"]),
        notes={"scale_declared": "relevance_scale" in cfg.options},
    )

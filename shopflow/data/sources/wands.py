"""Wayfair ANnotation DataSet (WANDS): tab-separated product, query and label files.

`ingest.path` is the folder with `product.csv`, `query.csv` and `label.csv` (WANDS's
`dataset/` folder). Labels map to grades Exact=2, Partial=1, Irrelevant=0.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import SourceError
from shopflow.data.contract import Tables
from shopflow.data.sources.files import read_table, require_rows

GRADES = {"Exact": 2.0, "Partial": 1.0, "Irrelevant": 0.0}


def _load(folder: Path, name: str, columns: tuple[str, ...], encoding: str) -> pd.DataFrame:
    path = folder / name
    frame = read_table(path, encoding, sep="\t")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SourceError(f"{path}: missing WANDS column(s) {', '.join(missing)}")
    return require_rows(frame, str(path), name.removesuffix(".csv"))


def _features(text: object) -> dict[str, str] | None:
    """WANDS packs attributes as 'name:value|name:value'."""
    if not isinstance(text, str) or not text:
        return None
    pairs = (item.split(":", 1) for item in text.split("|") if ":" in item)
    return {k.strip(): v.strip() for k, v in pairs if k.strip() and v.strip()} or None


def read(params: Params) -> Tables:
    folder = Path(params.ingest.path)
    encoding = params.ingest.encoding
    products = _load(folder, "product.csv", ("product_id", "product_name"), encoding)
    queries = _load(folder, "query.csv", ("query_id", "query"), encoding)
    labels = _load(folder, "label.csv", ("query_id", "product_id", "label"), encoding)
    unknown = sorted(set(labels["label"].dropna()) - set(GRADES))
    if unknown:
        raise SourceError(f"{folder / 'label.csv'}: unknown label value(s) {unknown}")
    joined = labels.merge(queries[["query_id", "query"]], on="query_id", how="left")
    orphans = joined["query"].isna().sum()
    if orphans:
        raise SourceError(f"{folder / 'label.csv'}: {orphans} label(s) reference unknown query ids")
    catalogue = pd.DataFrame(
        {
            "product_id": products["product_id"],
            "title": products["product_name"],
            "description": products.get("product_description"),
            "category": products.get("category hierarchy", products.get("product_class")),
            "attributes": products.get("product_features", pd.Series(dtype=object)).map(_features),
        }
    )
    judgments = pd.DataFrame(
        {
            "query": joined["query"],
            "product_id": joined["product_id"],
            "relevance": joined["label"].map(GRADES),
        }
    )
    return Tables(products=catalogue, judgments=judgments, relevance_scale=(0.0, 2.0))

"""Amazon Shopping Queries (ESCI): examples + products parquet, one locale.

`ingest.path` is the folder holding `shopping_queries_dataset_examples.parquet` and
`shopping_queries_dataset_products.parquet`. Options: `locale` (us, es, jp; default us),
`small_version` (true: the reduced task-1 set). Labels map to grades E=3, S=2, C=1, I=0.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import SourceError
from shopflow.data.contract import Tables
from shopflow.data.sources.files import read_table, require_rows

EXAMPLES = "shopping_queries_dataset_examples.parquet"
PRODUCTS = "shopping_queries_dataset_products.parquet"
GRADES = {"E": 3.0, "S": 2.0, "C": 1.0, "I": 0.0}


def _require(frame: pd.DataFrame, columns: tuple[str, ...], origin: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SourceError(f"{origin}: missing ESCI column(s) {', '.join(missing)}")


def read(params: Params) -> Tables:
    folder = Path(params.ingest.path)
    locale = str(params.ingest.options.get("locale", "us"))
    examples = read_table(folder / EXAMPLES)
    products = read_table(folder / PRODUCTS)
    _require(examples, ("query", "product_id", "product_locale", "esci_label"), folder / EXAMPLES)
    _require(products, ("product_id", "product_title", "product_locale"), folder / PRODUCTS)
    examples = examples[examples["product_locale"] == locale]
    if params.ingest.options.get("small_version") and "small_version" in examples.columns:
        examples = examples[examples["small_version"].astype(int) == 1]
    require_rows(examples, f"{folder / EXAMPLES} (locale {locale!r})", "judgment")
    unknown_labels = sorted(set(examples["esci_label"].dropna()) - set(GRADES))
    if unknown_labels:
        raise SourceError(f"{folder / EXAMPLES}: unknown esci_label value(s) {unknown_labels}")
    products = products[products["product_locale"] == locale]
    description = products.get("product_description")
    bullets = products.get("product_bullet_point")
    if description is not None and bullets is not None:
        description = description.fillna(bullets)
    catalogue = pd.DataFrame(
        {
            "product_id": products["product_id"],
            "title": products["product_title"],
            "description": description,
            "brand": products.get("product_brand"),
            "attributes": [
                {"colour": c} if isinstance(c, str) and c else None
                for c in products.get("product_color", pd.Series([None] * len(products)))
            ],
        }
    ).drop_duplicates("product_id")
    judgments = pd.DataFrame(
        {
            "query": examples["query"],
            "product_id": examples["product_id"],
            "relevance": examples["esci_label"].map(GRADES),
        }
    )
    return Tables(
        products=catalogue.reset_index(drop=True),
        judgments=judgments.reset_index(drop=True),
        relevance_scale=(0.0, 3.0),
        notes={"locale": locale, "label_map": GRADES},
    )

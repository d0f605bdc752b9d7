"""Stage `baselines`: the models every trained model must beat, and their test numbers.

BM25 over product text (`shopflow.models.lexical`), popularity and item-to-item
co-occurrence (`shopflow.models.popularity`), and the base encoder used zero-shot. Writes
`data/models/baselines/` (the BM25 index, popularity, co-occurrence, per-query test scores in
`eval/`) and `metrics/baselines.json` (BM25 and the zero-shot encoder on the judgments' test
split; popularity and co-occurrence on the test purchases).
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from shopflow.core import paths
from shopflow.core.artifacts import staged_dir, write_json, write_parquet
from shopflow.core.config import Params
from shopflow.data.features import product_text
from shopflow.data.tables import read_prepared
from shopflow.evaluation.offline import SEARCH_DEPTH, baseline_scores, summarize
from shopflow.models.bi_encoder import base_bi_encoder
from shopflow.models.lexical import BM25
from shopflow.models.popularity import cooccurrence, popularity

log = logging.getLogger(__name__)

NO_PAIRS = pd.DataFrame(columns=["split", "label", "product_id"])
NO_SEQUENCES = pd.DataFrame(columns=["split", "history", "product_id"])


def run(params: Params) -> dict:
    started = time.perf_counter()
    tables = read_prepared()
    products = tables["products"]
    texts = product_text(products)
    bm25 = BM25(products["product_id"], texts)
    popular = popularity(tables.get("pairs", NO_PAIRS), tables.get("sequences", NO_SEQUENCES))
    co = cooccurrence(tables.get("sequences", NO_SEQUENCES), popular)

    def zero_shot(queries: list[str]) -> list[list[tuple[str, float]]]:
        encoder = base_bi_encoder(params.models, max_len=params.retriever.max_item_len)
        encoder.index(products["product_id"].tolist(), texts)
        return encoder.search(queries, k=SEARCH_DEPTH)

    per_query = baseline_scores(
        tables, lambda q: bm25.search(q, k=SEARCH_DEPTH), zero_shot, popular, co, params
    )
    result = summarize(per_query)
    with staged_dir(paths.BASELINES) as staging:
        bm25.save(staging / "bm25")
        write_parquet(popular.reset_index(), staging / "popularity.parquet")
        write_parquet(co, staging / "cooccurrence.parquet")
        for name, frame in per_query.items():
            write_parquet(frame, paths.evaluation_of(staging) / f"{name}.parquet")
    write_json(paths.metrics("baselines"), result)
    log.info("baselines on the test split: %s (%.1fs)", result, time.perf_counter() - started)
    return result

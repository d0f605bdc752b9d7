"""Stage `baselines`: the models every trained model must beat, and their test numbers.

BM25F over the product's fields, stemmed, with k1, b and the field weights tuned on the
judged train and valid queries (`shopflow.models.lexical`, `shopflow.evaluation.bm25_tuning`),
the base encoder used zero-shot, and the recommenders a specialist builds first (recent
popularity, buy again, EASE, item-kNN: `shopflow.models.recommenders`), each knob chosen on
the valid purchases (`shopflow.evaluation.recommend`). Writes `data/models/baselines/` (the
BM25 settings every later lexical search uses, the tuned recommend baselines and which is
best, the popularity prior of the search features, per-query and per-purchase test scores in
`eval/`) and `metrics/baselines.json`.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from shopflow.core import paths
from shopflow.core.artifacts import staged_dir, write_json, write_metrics, write_parquet
from shopflow.core.config import Params
from shopflow.data.features import product_text
from shopflow.data.tables import read_prepared
from shopflow.evaluation import recommend
from shopflow.evaluation.bm25_tuning import tuned_bm25
from shopflow.evaluation.offline import SEARCH_DEPTH, baseline_search_scores, summarize
from shopflow.evaluation.recommend import read_policy, recommend_baselines, split_starts
from shopflow.models.bi_encoder import base_bi_encoder
from shopflow.models.popularity import popularity

log = logging.getLogger(__name__)

NO_PAIRS = pd.DataFrame(columns=["split", "label", "product_id"])
NO_SEQUENCES = pd.DataFrame(columns=["split", "history", "product_id"])


def run(params: Params) -> dict:
    started = time.perf_counter()
    tables = read_prepared()
    products = tables["products"]
    texts = product_text(products)
    bm25, tuning = tuned_bm25(products, tables.get("judgments"), params.bm25, params.seed)
    popular = popularity(tables.get("pairs", NO_PAIRS), tables.get("sequences", NO_SEQUENCES))

    def zero_shot(queries: list[str]) -> list[list[tuple[str, float]]]:
        encoder = base_bi_encoder(params.models, max_len=params.retriever.max_item_len)
        encoder.index(products["product_id"].tolist(), texts)
        return encoder.search(queries, k=SEARCH_DEPTH)

    per_query = baseline_search_scores(
        tables, lambda q: bm25.search(q, k=SEARCH_DEPTH), zero_shot, params
    )
    recommenders = None
    if "interactions" in tables:
        recommenders = recommend_baselines(
            tables["interactions"],
            products,
            split_starts(),
            read_policy()["exclude"],
            params.recommend,
            params.retriever.history_items,
            recommend.choice_metric(params.gate.primary),
        )
    result: dict = {
        **summarize(per_query),
        "bm25_settings": {**bm25.settings.as_dict(), **tuning},
    }
    if recommenders is not None:
        result.update(
            {
                f"{name}_recommend": recommend.summary(frame)
                for name, frame in recommenders.test.items()
            }
        )
        result["recommend_baselines"] = {**recommenders.settings.as_dict(), **recommenders.info}
    with staged_dir(paths.BASELINES) as staging:
        bm25.settings.save(staging / paths.BM25_SETTINGS.relative_to(paths.BASELINES), tuning)
        write_parquet(popular.reset_index(), staging / "popularity.parquet")
        for name, frame in per_query.items():
            write_parquet(frame, paths.evaluation_of(staging) / f"{name}.parquet")
        if recommenders is not None:
            write_json(
                staging / paths.RECOMMEND_BASELINE.relative_to(paths.BASELINES),
                {**recommenders.settings.as_dict(), **recommenders.info},
            )
            for name, frame in recommenders.test.items():
                write_parquet(frame, paths.evaluation_of(staging) / f"{name}_recommend.parquet")
    write_metrics("baselines", result)
    log.info("baselines on the test split: %s (%.1fs)", result, time.perf_counter() - started)
    return result

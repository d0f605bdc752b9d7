"""Stage `recommender`: what `/recommend` serves, chosen on the valid purchases.

Reads `data/prepared` (the interactions and the exclusion rule prepare resolved), the tuned
baselines (`data/models/baselines/recommend.json`) and the retriever, whose query tower over
a customer's recent products is one of the candidate sources. Chooses between the best
baseline and a LightGBM mix of the sources (`shopflow.training.recommend_mix`), scores the
choice on the test purchases against every baseline (customer-level paired tests), and writes
the served recommender fitted on every interaction up to the end of the window
(`data/models/recommender`: settings, sources, ranker, customer profiles; per-purchase test
scores in `eval/`) and `metrics/recommender.json`. A shop without purchases gets a marker
that says so, and its models serve no recommendations.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from shopflow.core import paths
from shopflow.core.artifacts import read_json, staged_dir, write_json, write_metrics, write_parquet
from shopflow.core.config import Params
from shopflow.data.features import product_text, titles_of
from shopflow.data.tables import read_prepared
from shopflow.engine.recommend import RecommendSettings, user_tower, write_marker
from shopflow.evaluation import recommend, significance
from shopflow.models.bi_encoder import BiEncoder
from shopflow.models.device import device_of
from shopflow.training.recommend_mix import fit_recommender

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    started = time.perf_counter()
    tables = read_prepared()
    acts = tables.get("interactions")
    if acts is None or not paths.RECOMMEND_BASELINE.exists():
        return skip("no interactions (a shop with judgments only)")
    products = tables["products"]
    tower = None
    if "user_tower" in params.recommend.sources:
        cfg = params.retriever
        retriever = BiEncoder.load_indexed(
            paths.RETRIEVER,
            products["product_id"].tolist(),
            product_text(products),
            device_of(params),
            cfg.max_item_len,
            cfg.max_query_len,
            cfg.eval_batch_size,
        )
        tower = user_tower(retriever, titles_of(products), cfg.history_items)
    fitted = fit_recommender(
        acts,
        products,
        recommend.split_starts(),
        pd.Timestamp(params.ingest.window.bounds()[1]),
        RecommendSettings.from_dict(read_json(paths.RECOMMEND_BASELINE)),
        params,
        tower,
    )
    if fitted is None:
        return skip("no purchases of known customers in the valid or the test split")
    result = {
        **fitted.result,
        "policy": recommend.read_policy(),  # the rule, why, and the re-buy shares it read
        "compare": compare_with_baselines(fitted.test["recommend"], params),
    }
    with staged_dir(paths.RECOMMENDER) as staging:
        fitted.served.save(staging, {"serving": fitted.result["serving"]})
        for name, frame in fitted.test.items():
            write_parquet(frame, paths.evaluation_of(staging) / f"{name}.parquet")
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_metrics("recommender", result)
    log.info("recommender: %s", result)
    return result


def compare_with_baselines(scores: pd.DataFrame, params: Params) -> dict:
    """The served recommender against each baseline on the test purchases (the same rows),
    customers resampled."""
    out = {}
    folder = paths.evaluation_of(paths.BASELINES)
    for path in sorted(folder.glob("*_recommend.parquet")):
        other = pd.read_parquet(path)
        if len(other) != len(scores):
            log.warning("%s: other purchases than the recommender's; not compared", path)
            continue
        test = significance.compare(
            scores["hit@10"],
            other["hit@10"],
            clusters=scores["cluster"].to_numpy(),
            confidence=params.evaluation.confidence,
            resamples=params.evaluation.resamples,
            seed=params.seed,
        )
        out[f"vs_{path.stem.removesuffix('_recommend')}"] = {
            k: round(v, 4) if isinstance(v, float) else v for k, v in test.items()
        }
    return out


def skip(reason: str) -> dict:
    log.warning("recommender: nothing to recommend from (%s); serving none", reason)
    with staged_dir(paths.RECOMMENDER) as staging:
        write_marker(staging, reason)
    result = {"skipped": reason}
    write_json(paths.metrics("recommender"), result)
    return result

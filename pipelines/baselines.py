"""Stage `baselines`: the models every trained model must beat, and their test numbers.

- BM25 over product text (`bm25s`: a maintained, sparse-matrix BM25, fast to index and query);
- popularity: interactions in the training split, weighted click 1, add to cart 2, purchase 3;
- item-to-item co-occurrence: products bought after one another by the same user
  (history → next purchase), normalised by the neighbour's popularity so that best-sellers
  do not drown every list.

Writes `data/models/baselines/` and `metrics/baselines.json` (BM25 on the judgments' test
split; popularity and co-occurrence on the test purchases).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import metrics as rank_metrics
from pipelines.artifacts import staged_dir, write_json, write_parquet
from pipelines.config import Params
from pipelines.features import product_text
from pipelines.prepare import load_prepared

log = logging.getLogger(__name__)

IN_DIR = Path("data/prepared")
OUT_DIR = Path("data/models/baselines")
METRICS = Path("metrics/baselines.json")
CO_WINDOW = 5  # how many of the most recent history items count as co-occurring
NEIGHBOURS = 50


class BM25:
    """BM25 search over product text."""

    def __init__(self, product_ids: Sequence[str], texts: Sequence[str]) -> None:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG on import

        self.product_ids = np.asarray(product_ids)
        self.index = bm25s.BM25()
        self.index.index(
            bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False
        )

    def search(self, queries: Sequence[str], k: int = 100) -> list[list[tuple[str, float]]]:
        import bm25s

        tokens = bm25s.tokenize(
            list(queries), stopwords="en", return_ids=False, show_progress=False
        )
        k = min(k, len(self.product_ids))
        docs, scores = self.index.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [
            [(self.product_ids[d], float(s)) for d, s in zip(row_d, row_s, strict=True) if s > 0]
            for row_d, row_s in zip(docs, scores, strict=True)
        ]

    def save(self, folder: Path) -> None:
        self.index.save(str(folder))
        write_parquet(
            pd.DataFrame({"product_id": self.product_ids}), folder / "product_ids.parquet"
        )


def popularity(pairs: pd.DataFrame, sequences: pd.DataFrame) -> pd.Series:
    """Interaction-weighted counts per product in the training split, highest first."""
    train_pairs = pairs[(pairs["split"] == "train") & (pairs["label"] > 0)]
    score = train_pairs.groupby("product_id")["label"].sum().astype(float)
    bought = (
        sequences.loc[sequences["split"] == "train", "product_id"].value_counts().astype(float) * 3
    )
    return (
        score.add(bought, fill_value=0).sort_values(ascending=False, kind="stable").rename("score")
    )


def popularity_prior(popular: pd.Series, product_ids: Sequence[str]) -> np.ndarray:
    """Popularity on a [0, 1] log scale per product (0 for never-interacted products): the
    prior the retriever adds to recommendations, with a weight fitted on the valid split."""
    counts = popular.reindex(pd.Index(product_ids), fill_value=0.0).to_numpy(float)
    top = np.log1p(counts.max()) if len(counts) and counts.max() > 0 else 1.0
    return (np.log1p(counts) / top).astype(np.float32)


def cooccurrence(sequences: pd.DataFrame, popular: pd.Series) -> pd.DataFrame:
    """Top neighbours per item: count(item, next purchase) / sqrt(popularity of the neighbour)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for history, target in sequences.loc[
        sequences["split"] == "train", ["history", "product_id"]
    ].itertuples(index=False):
        for item in list(history)[-CO_WINDOW:]:
            if item != target:
                counts[item][target] += 1
    rows = []
    for item, neighbours in counts.items():
        scored = [(n, c / np.sqrt(popular.get(n, 1.0) + 1.0)) for n, c in neighbours.items()]
        for neighbour, score in sorted(scored, key=lambda x: -x[1])[:NEIGHBOURS]:
            rows.append((item, neighbour, score))
    return pd.DataFrame(rows, columns=["product_id", "neighbour", "score"])


class CoOccurrenceRecommender:
    """Sum the neighbour scores of the recent history; fill up with popular items."""

    def __init__(self, table: pd.DataFrame, popular: pd.Series) -> None:
        self.neighbours: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for item, neighbour, score in table[["product_id", "neighbour", "score"]].itertuples(
            index=False
        ):
            self.neighbours[item].append((neighbour, score))
        self.popular = list(popular.index[:200])

    def recommend(self, history: Sequence[str], k: int = 10) -> list[str]:
        scores: Counter = Counter()
        for item in list(history)[-CO_WINDOW:]:
            for neighbour, score in self.neighbours.get(item, ()):
                scores[neighbour] += score
        ranked = [n for n, _ in scores.most_common(k)]
        return (ranked + [p for p in self.popular if p not in set(ranked)])[:k]


def zero_shot_search(params: Params, products: pd.DataFrame, queries: list[str]) -> list[list]:
    """The base encoder as a dense retriever, untrained on the shop: what fine-tuning must beat."""
    from pipelines.encoders import resolve_base_model
    from pipelines.encoding import Retriever

    base = resolve_base_model(params.models.base, params.models.allow_download)
    retriever = Retriever.load(base, max_len=params.retriever.max_item_len)
    retriever.index(products["product_id"].tolist(), product_text(products))
    return retriever.search(queries, k=100)


def without_history(recs: Sequence[str], history: Sequence[str], k: int = 10) -> list[str]:
    seen = set(history)
    return [r for r in recs if r not in seen][:k]


def evaluate(
    tables: dict[str, pd.DataFrame],
    bm25: BM25,
    popular: pd.Series,
    co: pd.DataFrame,
    params: Params,
) -> dict[str, pd.DataFrame]:
    """Test-split scores of every baseline, per query (search) or per purchase (recommend)."""
    result: dict[str, pd.DataFrame] = {}
    judged = tables.get("judgments")
    if judged is not None and (judged["split"] == "test").any():
        qrels = rank_metrics.qrels_from(judged[judged["split"] == "test"])
        queries = list(qrels)
        runs = {
            "bm25": bm25.search(queries, k=100),
            "zero_shot_encoder": zero_shot_search(params, tables["products"], queries),
        }
        for name, hits in runs.items():
            ranking = {q: [pid for pid, _ in h] for q, h in zip(queries, hits, strict=True)}
            scores = rank_metrics.per_query(qrels, ranking, params.evaluation.relevant_at)
            result[f"{name}_search"] = scores
    sequences = tables.get("sequences")
    if sequences is not None and (sequences["split"] == "test").any():
        test = sequences[sequences["split"] == "test"]
        histories = [list(h) if params.evaluation.exclude_history else [] for h in test["history"]]
        depth = 10 + max((len(h) for h in histories), default=0)
        popular_top = list(popular.index[:depth])
        recommender = CoOccurrenceRecommender(co, popular)
        runs = {
            "popularity": [without_history(popular_top, h) for h in histories],
            "cooccurrence": [
                without_history(recommender.recommend(list(h), depth), seen)
                for h, seen in zip(test["history"], histories, strict=True)
            ],
        }
        for name, recs in runs.items():
            result[f"{name}_recommend"] = rank_metrics.next_item(list(test["product_id"]), recs)
    return result


def summarize(per_query: dict[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """Means of every metric column, and how many queries/examples they are over."""
    return {
        name: {**rank_metrics.means(frame), "n": len(frame)} for name, frame in per_query.items()
    }


def run(
    params: Params, in_dir: Path = IN_DIR, out_dir: Path = OUT_DIR, metrics: Path = METRICS
) -> dict:
    started = time.perf_counter()
    tables = load_prepared(in_dir)
    products = tables["products"]
    bm25 = BM25(products["product_id"], product_text(products))
    empty_pairs = pd.DataFrame(columns=["split", "label", "product_id"])
    empty_sequences = pd.DataFrame(columns=["split", "history", "product_id"])
    popular = popularity(tables.get("pairs", empty_pairs), tables.get("sequences", empty_sequences))
    co = cooccurrence(tables.get("sequences", empty_sequences), popular)
    per_query = evaluate(tables, bm25, popular, co, params)
    result = summarize(per_query)
    with staged_dir(out_dir) as staging:
        bm25.save(staging / "bm25")
        write_parquet(popular.reset_index(), staging / "popularity.parquet")
        write_parquet(co, staging / "cooccurrence.parquet")
        for name, frame in per_query.items():
            write_parquet(frame, staging / "eval" / f"{name}.parquet")
    write_json(metrics, result)
    log.info("baselines on the test split: %s (%.1fs)", result, time.perf_counter() - started)
    return result

"""The retriever's training examples: (query text, positive product, hard negative), from every
source the data has, one split at a time.

- judgments: a query and a product graded relevant; the hard negative is a product judged
  not relevant for that query when there is one (known wrong), else a BM25 hit for the query
  that was never judged, below the top `bm25_negative_skip` ranks (lexically close, yet
  likely wrong: where judgments are sparse, BM25's very top holds relevant, unjudged
  products, which would be trained as negatives);
- clicks: a query (with the session's history for `history_share` of them) and a clicked
  product; the hard negative is a product shown in the same list and not clicked;
- purchases: the user's recent items alone and the product bought next; in-batch negatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.data.features import history_texts, query_text, titles_of
from shopflow.models.lexical import BM25, Bm25Settings

log = logging.getLogger(__name__)

NO_NEGATIVE = -1
COLUMNS = ["query_text", "positive", "negative", "source", "unit"]


@dataclass
class Examples:
    """Training examples: query texts and product row numbers (NO_NEGATIVE: in-batch only),
    and whose data each one is (`units`: the customer's pseudonymous key, or `judged:<query>`
    for an annotator's judgment): the unit private training samples and clips."""

    queries: list[str]
    positives: np.ndarray
    negatives: np.ndarray
    sources: np.ndarray
    units: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, index: np.ndarray) -> Examples:
        return Examples(
            [self.queries[i] for i in index],
            self.positives[index],
            self.negatives[index],
            self.sources[index],
            self.units[index],
        )


def judgment_examples(
    judged: pd.DataFrame,
    bm25_hits: dict[str, list[str]],
    relevant_at: float,
    rng: np.random.Generator,
    bm25_skip: int = 0,
) -> pd.DataFrame:
    """Relevant (query, product) pairs, each with a negative: judged not relevant for the
    query if any, else a never-judged BM25 hit below rank `bm25_skip`."""
    is_relevant = judged["relevance"] >= relevant_at
    relevant = judged[is_relevant]
    wrong = judged[~is_relevant].groupby("query")["product_id"].agg(list).to_dict()
    seen = judged.groupby("query")["product_id"].agg(set).to_dict()
    rows = []
    for query, product in relevant[["query", "product_id"]].itertuples(index=False):
        pool = wrong.get(query) or [
            p for p in bm25_hits.get(query, ())[bm25_skip:] if p not in seen[query]
        ]
        negative = pool[rng.integers(len(pool))] if pool else None
        rows.append((query, product, negative, "judgments", f"judged:{query}"))
    return pd.DataFrame(rows, columns=COLUMNS)


def click_examples(
    pairs: pd.DataFrame,
    histories: pd.DataFrame,
    titles: dict[str, str],
    history_items: int,
    history_share: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Clicked (query, product) pairs; negative: shown in the same list and not clicked."""
    key = ["session_id", "query"]
    skipped = pairs[~pairs["clicked"]].groupby(key)["product_id"].agg(list).to_dict()
    history = dict(zip(histories["session_id"], histories["history"], strict=True))
    clicked = pairs[pairs["clicked"]]
    rows = []
    columns = [*key, "product_id", "user_key"]
    for session, query, product, user in clicked[columns].itertuples(index=False):
        shown = skipped.get((session, query), ())
        negative = shown[rng.integers(len(shown))] if len(shown) else None
        recent = history.get(session)
        if recent is not None and len(recent) and rng.random() < history_share:
            text = query_text(query, [titles.get(p, "") for p in recent], history_items)
        else:
            text = query
        rows.append((text, product, negative, "clicks", user))
    return pd.DataFrame(rows, columns=COLUMNS)


def purchase_examples(
    sequences: pd.DataFrame, titles: dict[str, str], history_items: int
) -> pd.DataFrame:
    """Recent items alone → the product bought next (the recommendation task)."""
    texts = history_texts(sequences["history"], titles, history_items)
    return pd.DataFrame(
        {
            "query_text": texts,
            "positive": sequences["product_id"].to_numpy(),
            "negative": None,
            "source": "purchases",
            "unit": sequences["user_key"].to_numpy(),
        }
    )


def training_examples(
    tables: dict[str, pd.DataFrame],
    params: Params,
    bm25_hits: dict[str, list[str]],
    split: str = "train",
) -> Examples:
    """Every source present in the prepared data, one split (train), capped per source."""
    cfg = params.retriever
    rng = np.random.default_rng(params.seed)
    products = tables["products"]
    titles = titles_of(products)
    frames = []
    if "judgments" in tables:
        judged = tables["judgments"][tables["judgments"]["split"] == split]
        frames.append(
            judgment_examples(
                judged, bm25_hits, params.evaluation.relevant_at, rng, cfg.bm25_negative_skip
            )
        )
    if "pairs" in tables:
        pairs = tables["pairs"][tables["pairs"]["split"] == split]
        histories = tables.get("histories", pd.DataFrame(columns=["session_id", "history"]))
        frames.append(
            click_examples(pairs, histories, titles, cfg.history_items, cfg.history_share, rng)
        )
    if "sequences" in tables:
        sequences = tables["sequences"][tables["sequences"]["split"] == split]
        frames.append(purchase_examples(sequences, titles, cfg.history_items))
    frames = [f for f in frames if len(f)]
    if not frames:
        raise StageInputError(
            f"retriever: no examples (no relevant judgments, clicks or purchases in the {split} "
            "split)"
        )
    capped = [
        f.sample(n=cfg.max_examples_per_source, random_state=params.seed)
        if len(f) > cfg.max_examples_per_source
        else f
        for f in frames
    ]
    examples = pd.concat(capped, ignore_index=True)
    row = {pid: i for i, pid in enumerate(products["product_id"])}
    negatives = examples["negative"].map(row).fillna(NO_NEGATIVE).astype(int)
    counts = examples["source"].value_counts().to_dict()
    log.info(
        "retriever: %d %s examples %s, %.0f%% with a hard negative",
        len(examples),
        split,
        counts,
        100 * (negatives >= 0).mean(),
    )
    return Examples(
        queries=examples["query_text"].tolist(),
        positives=examples["positive"].map(row).to_numpy(int),
        negatives=negatives.to_numpy(),
        sources=examples["source"].to_numpy(),
        units=examples["unit"].astype(str).to_numpy(),
    )


VALID_BATCHES = 4  # valid-split batches scored at each checkpoint: the validation curve


def validation_examples(tables: dict[str, pd.DataFrame], params: Params) -> Examples | None:
    """A fixed sample of valid-split examples, in-batch negatives only; None when the split
    has none. The same batches at every checkpoint make the curve's points comparable."""
    try:
        examples = training_examples(tables, params, {}, split="valid")
    except StageInputError:
        return None
    size = min(len(examples), VALID_BATCHES * params.retriever.batch_size)
    return examples.subset(np.random.default_rng(params.seed).permutation(len(examples))[:size])


def bm25_negatives(
    tables: dict[str, pd.DataFrame], depth: int, settings: Bm25Settings
) -> dict[str, list[str]]:
    """BM25's top `depth` for each judged train query (with the tuned `settings`)."""
    judged = tables.get("judgments")
    if judged is None or not (judged["split"] == "train").any():
        return {}
    queries = sorted(judged.loc[judged["split"] == "train", "query"].unique())
    bm25 = BM25.of_products(tables["products"], settings)
    hits = bm25.search(queries, k=depth)
    return {q: [pid for pid, _ in h] for q, h in zip(queries, hits, strict=True)}

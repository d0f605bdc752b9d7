"""The champion as a probe of a window: its embeddings of the queries and of the products
shoppers chose (text drift), and the score of its top answer to the queries (prediction
drift)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shopflow.core.config import Params
from shopflow.engine.bundle import load_engine
from shopflow.models.bi_encoder import BiEncoder, base_bi_encoder
from shopflow.models.lexical import BM25, configured
from shopflow.monitoring.reference import Window


def text_sample(texts: pd.Series, size: int, seed: int) -> list[str]:
    """Texts as they occurred, sampled by traffic (a frequent query is drawn often)."""
    texts = texts.dropna().astype(str)
    if len(texts) > size:
        texts = texts.sample(size, random_state=seed)
    return texts.tolist()


@dataclass
class Probe:
    """What the champion makes of a window: its embeddings of the queries and of the products
    shoppers chose, and the score of its top answer to the queries."""

    name: str
    embed_queries: Callable[[Sequence[str]], np.ndarray]
    embed_items: Callable[[Sequence[str]], np.ndarray]
    top_score: Callable[[Sequence[str]], np.ndarray]

    def apply(self, window: Window, size: int, seed: int) -> None:
        queries = text_sample(window.queries, size, seed)
        if queries:
            window.embeddings["query_embedding"] = self.embed_queries(queries)
            window.scores = self.top_score(queries)
        items = text_sample(window.items, size, seed)
        if items:
            window.embeddings["item_embedding"] = self.embed_items(items)


def model_probe(bundle: Path, device: str = "cpu") -> Probe:
    """A promoted model over its own catalogue: the query tower, and the reranker's score of
    the retriever's first hit (the retriever's score when it has no reranker)."""
    engine = load_engine(bundle, device)

    def top_score(queries: Sequence[str]) -> np.ndarray:
        found = engine.candidates_for(list(queries), k=1)
        hits = engine.rerank(list(queries), found, k=1, limit=1)
        return np.array([h[0].score if h else np.nan for h in hits], np.float64)

    def embed_items(titles: Sequence[str]) -> np.ndarray:
        return engine.retriever.encode(list(titles))

    return Probe(f"model {bundle.name}", engine.embed_queries, embed_items, top_score)


def baseline_probe(
    params: Params, products: pd.DataFrame, encoder: BiEncoder | None = None
) -> Probe:
    """The baseline champion: BM25's top score, and the base encoder's embeddings (the
    baseline has none; the base encoder is what every model starts from)."""
    bm25 = BM25.of_products(products, configured(params.bm25))
    encoder = encoder or base_bi_encoder(params.models)

    def top_score(queries: Sequence[str]) -> np.ndarray:
        hits = bm25.search(list(queries), k=1)
        return np.array([h[0][1] if h else 0.0 for h in hits], np.float64)

    def embed_queries(queries: Sequence[str]) -> np.ndarray:
        return encoder.encode(list(queries), max_len=params.retriever.max_query_len)

    def embed_items(titles: Sequence[str]) -> np.ndarray:
        return encoder.encode(list(titles), max_len=params.retriever.max_item_len)

    return Probe(
        f"baseline (BM25; {params.models.base} embeddings)", embed_queries, embed_items, top_score
    )

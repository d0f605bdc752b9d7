"""What the service answers: the response models, `/version`'s description of the served
model, and the bridge between the engine's hits and an experiment's impression."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from shopflow.core.secrets import Mode
from shopflow.engine.search import Hit, SearchEngine
from shopflow.online.router import Ranked, ShownItem


class Pair(BaseModel):
    query: str
    product_id: str
    prior: float


class ProductHit(BaseModel):
    product_id: str
    title: str
    score: float
    retriever_score: float


class Answer(BaseModel):
    products: list[ProductHit]
    model_version: str
    impression_id: str | None = None  # the id POST /events names


class EventsAccepted(BaseModel):
    accepted: int  # logged now
    duplicates: int  # event ids this process had logged before (a retried batch)
    not_logged: int  # the log buffer was full: send these again


def ranked(hits: Sequence[Hit], version: str | None, ms: float) -> Ranked:
    """One model's hits as the experiment router sees them."""
    return Ranked([h.product_id for h in hits], [h.score for h in hits], version or "", ms)


def shown_hits(items: Iterable[ShownItem], hits: Iterable[Hit]) -> list[Hit]:
    """The hits in the order the impression shows them, each with the score of the model
    that placed it."""
    by_id = {h.product_id: h for h in hits}
    return [
        Hit(
            product_id=i.product_id,
            title=by_id[i.product_id].title,
            score=i.score,
            retriever_score=by_id[i.product_id].retriever_score,
        )
        for i in items
    ]


def describe(model: Any, engine: SearchEngine, adaptive_batching: bool, api_key: bool) -> dict:
    """GET /version's body: which model serves, how it was built and how it serves."""
    meta = model.info.metadata
    recommender = engine.recommender
    mode = engine.info.get("mode", str(Mode.PRODUCTION))
    return {
        "model": str(model.tag),
        "model_version": meta.get("model_version", model.tag.version),
        "git_revision": meta.get("git_revision", "unknown"),
        "data_hash": meta.get("data_hash", "unknown"),
        "created_at": meta.get("created_at"),
        "promoted_at": meta.get("promoted_at") or os.environ.get("SHOPFLOW_PROMOTED_AT"),
        "metrics": meta.get("metrics", {}),
        "privacy": meta.get("privacy"),
        "reranker": engine.reranker is not None,
        "feature_ranker": engine.ranker is not None,
        "first_stage": engine.first_stage,
        "recommends": None
        if recommender is None
        else {
            "serve": recommender.settings.serve,
            "sources": list(recommender.settings.mix_sources),
            "exclude": recommender.settings.exclude,
        },
        "index": engine.index.kind,
        "runtime": engine.info["settings"].get("onnx", "none"),
        "onnx": engine.info.get("onnx"),
        "products": len(engine.catalogue),
        "adaptive_batching": adaptive_batching,
        "mode": mode,
        "per_customer_access": "api key"
        if api_key
        else "open (demo model)"
        if mode == Mode.DEMO
        else "closed (no API key configured)",
    }

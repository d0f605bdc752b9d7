"""The shopflow BentoML service: /search, /recommend, /rank, /version, plus BentoML's own
/healthz, /livez, /readyz and /metrics.

All scoring is `shopflow.engine.search` — the code the reranker stage evaluates with — so what is
served is what was measured. This file only wires it to HTTP:

- `Shopflow` (the API) embeds queries, searches the product vectors and merges scores.
- `Scorer` runs the cross-encoder behind BentoML adaptive batching: the (query, product)
  pairs of concurrent requests are scored in one forward pass, up to
  `serving.max_batch_size` pairs within `serving.max_latency_ms`. With
  `serving.adaptive_batching: false` the API scores in-process instead (one request at a time).
- GET /version is a small Starlette app mounted behind BentoML's routes.

The model is the BentoML model `$SHOPFLOW_MODEL` (default `shopflow:latest`); limits and
batching come from the `serving` section of `$SHOPFLOW_PARAMS` (default: params.yaml next to
this folder). `/readyz` answers 200 only once the models and the product index are loaded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, cast

import anyio
import bentoml
from bentoml.exceptions import BadInput, BentoMLException, ServiceUnavailable
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shopflow.core import paths
from shopflow.core.config import load_params
from shopflow.core.errors import ConfigError
from shopflow.core.secrets import MIN_KEY_CHARS, Mode, read_secret
from shopflow.engine.bundle import load_engine, load_pair_scorer
from shopflow.engine.search import Candidates, Filters, Hit
from shopflow.serving.hardening import limit_headers, quiet_client_errors
from shopflow.serving.http import API_KEY_ENV, RequestGuard, UnknownProductsError, request_models

ROOT = Path(__file__).resolve().parent.parent
PARAMS = load_params(os.environ.get("SHOPFLOW_PARAMS", ROOT / paths.PARAMS))
CFG = PARAMS.serving
MODEL_TAG = os.environ.get("SHOPFLOW_MODEL", "shopflow:latest")
DEVICE = "cuda" if PARAMS.models.device == "cuda" else "cpu"
REQUESTS = request_models(CFG)
API_PATHS = ("/search", "/recommend", "/rank")
API_KEY = read_secret(API_KEY_ENV)
if API_KEY is not None and len(API_KEY) < MIN_KEY_CHARS:
    raise ConfigError(f"{API_KEY_ENV} is {len(API_KEY)} characters: use at least {MIN_KEY_CHARS}")
limit_headers(CFG.read_timeout_s, CFG.max_header_bytes)
quiet_client_errors()

STAGE_SECONDS = bentoml.metrics.Histogram(
    name="shopflow_stage_seconds",
    documentation="Seconds spent in each step of a request (embed, retrieve, rerank)",
    labelnames=["endpoint", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


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


def stored_model(ref: bentoml.models.BentoModel) -> bentoml.Model:
    """The declared model from the store, or an error that says how to provide it (BentoML
    would otherwise try to pull it from BentoCloud)."""
    stored = ref.stored
    if stored is None:
        raise bentoml.exceptions.NotFound(
            f"BentoML model {ref.tag} is not in the model store: run `make serve` (saves the "
            "current run's model) or set SHOPFLOW_MODEL to a saved shopflow:<version>"
        )
    return stored


@bentoml.service(name="shopflow-scorer", traffic={"timeout": 60})
class Scorer:
    """The cross-encoder, batched across concurrent requests."""

    bundle = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.score_pairs = load_pair_scorer(stored_model(type(self).bundle).path, DEVICE)

    @bentoml.api(
        batchable=True, max_batch_size=CFG.max_batch_size, max_latency_ms=CFG.max_latency_ms
    )
    def score(self, pairs: list[Pair]) -> list[float]:
        scores = self.score_pairs(
            [p.query for p in pairs], [p.product_id for p in pairs], [p.prior for p in pairs]
        )
        return scores.tolist()


@bentoml.service(name="shopflow", traffic={"timeout": 60})
class Shopflow:
    """Search, recommendation and ranking for one shop's catalogue."""

    bundle = bentoml.models.BentoModel(MODEL_TAG)  # packed into the Bento by `bentoml build`
    if CFG.adaptive_batching:
        scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        model = stored_model(type(self).bundle)
        self.engine = load_engine(model.path, DEVICE)
        if self.engine.reranker is not None and self.engine.candidates > CFG.max_batch_size:
            raise ValueError(
                f"reranker.candidates ({self.engine.candidates}) exceeds serving.max_batch_size "
                f"({CFG.max_batch_size}): one request's pairs must fit one batch"
            )
        self.about = {
            "model": str(model.tag),
            "model_version": model.info.metadata.get("model_version", model.tag.version),
            "git_revision": model.info.metadata.get("git_revision", "unknown"),
            "data_hash": model.info.metadata.get("data_hash", "unknown"),
            "created_at": model.info.metadata.get("created_at"),
            "promoted_at": model.info.metadata.get("promoted_at")
            or os.environ.get("SHOPFLOW_PROMOTED_AT"),
            "metrics": model.info.metadata.get("metrics", {}),
            "reranker": self.engine.reranker is not None,
            "feature_ranker": self.engine.ranker is not None,
            "first_stage": self.engine.first_stage,
            "recommends": None
            if self.engine.recommender is None
            else {
                "serve": self.engine.recommender.settings.serve,
                "sources": list(self.engine.recommender.settings.mix_sources),
                "exclude": self.engine.recommender.settings.exclude,
            },
            "index": self.engine.index.kind,
            "runtime": self.engine.info["settings"].get("onnx", "none"),
            "onnx": self.engine.info.get("onnx"),
            "products": len(self.engine.catalogue),
            "adaptive_batching": CFG.adaptive_batching,
            "mode": self.engine.info.get("mode", str(Mode.PRODUCTION)),
            "per_customer_access": "api key"
            if API_KEY
            else "open (demo model)"
            if self.engine.info.get("mode") == Mode.DEMO
            else "closed (no API key configured)",
        }
        self.ready = True

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    async def _scores(
        self, endpoint: str, query: str, found: Candidates, priors: list[float]
    ) -> list[float]:
        """The cross-encoder's scores of the candidates; without one, the feature ranker's
        or the first stage's, in this process (well under a millisecond: no scorer hop)."""
        if self.engine.reranker is None or not found:
            return self.engine.local_scores(query, found, priors)
        started = time.perf_counter()
        pairs = [
            Pair(query=query, product_id=p, prior=s)
            for (p, _), s in zip(found, priors, strict=True)
        ]
        if CFG.adaptive_batching:
            try:
                scores = await self.scorer.to_async.score(pairs)
            except BentoMLException:
                raise  # the scorer's own answer, e.g. 503 when the batcher sheds load
            except Exception as exc:  # a dropped connection to an overloaded scorer
                raise ServiceUnavailable(
                    f"the reranker is overloaded ({type(exc).__name__}); retry later"
                ) from exc
        else:
            scores = await anyio.to_thread.run_sync(
                self.engine.score_pairs,
                [p.query for p in pairs],
                [p.product_id for p in pairs],
                [p.prior for p in pairs],
            )
            scores = scores.tolist()
        STAGE_SECONDS.labels(endpoint=endpoint, stage="rerank").observe(
            time.perf_counter() - started
        )
        return scores

    def _answer(self, hits: list[Hit]) -> Answer:
        return Answer(
            products=[ProductHit(**h.__dict__) for h in hits],
            model_version=self.about["model_version"],
        )

    @bentoml.api(input_spec=REQUESTS.search)
    async def search(
        self, query: str, user_key: str | None = None, k: int = 10, filters=None
    ) -> Answer:
        """Top k products for a query: retrieve over the catalogue, rerank the candidates."""
        engine = self.engine
        recent = engine.recent(user_key)
        chosen = Filters(
            category=filters.category if filters else None,
            min_price=filters.price.min if filters and filters.price else None,
            max_price=filters.price.max if filters and filters.price else None,
        )
        started = time.perf_counter()
        found, priors = (
            await anyio.to_thread.run_sync(
                lambda: engine.candidates_for([query], k, [recent] if recent else None, chosen)
            )
        )[0]
        STAGE_SECONDS.labels(endpoint="search", stage="retrieve").observe(
            time.perf_counter() - started
        )
        scores = await self._scores("search", query, found, priors)
        return self._answer(engine.merge(found, scores, k))

    @bentoml.api(input_spec=REQUESTS.recommend)
    async def recommend(
        self,
        user_key: str | None = None,
        recent_product_ids: list[str] | None = None,
        k: int = 10,
    ) -> Answer:
        """Next products for a customer (`user_key`) and the products sent with the request;
        never one the model's exclusion rule (`recommend.exclude`) leaves out."""
        engine = self.engine
        if engine.recommender is None:
            raise BadInput("this model serves no recommendations (trained without purchases)")
        recent = list(recent_product_ids or [])
        if recent:
            unknown = engine.catalogue.unknown(recent)
            if unknown:
                raise BadInput(str(UnknownProductsError("recent_product_ids", unknown)))
        known = user_key is not None and engine.recommender.knows(user_key)
        if not known and not recent:
            raise BadInput(
                f"user_key {user_key!r} has no history in this model: send recent_product_ids"
            )
        hits = await anyio.to_thread.run_sync(
            lambda: engine.recommend([user_key], k, [recent] if recent else None)
        )
        return self._answer(hits[0])

    @bentoml.api(input_spec=REQUESTS.rank)
    async def rank(self, query: str, product_ids: list[str]) -> Answer:
        """The given products reordered for the query (for shops with their own retrieval)."""
        engine = self.engine
        unknown = engine.catalogue.unknown(product_ids)
        if unknown:
            raise BadInput(str(UnknownProductsError("product_ids", unknown)))
        cands, priors = await anyio.to_thread.run_sync(engine.rank_candidates, query, product_ids)
        scores = await self._scores("rank", query, cands, priors)
        return self._answer(engine.merge(cands, scores, len(cands)))


async def version(_: Request) -> JSONResponse:
    """GET /version: model version, git revision, data hash, creation and promotion time."""
    service = bentoml.get_current_service()
    if service is None or not hasattr(service, "about"):
        return JSONResponse({"error": "the model is still loading"}, status_code=503)
    return JSONResponse(service.about)


# @bentoml.service wraps the class in a Service (which has these methods); mypy sees the class.
api = cast(Any, Shopflow)
api.mount_asgi_app(Starlette(routes=[Route("/version", version, methods=["GET"])]), path="/")


def demo_model() -> bool:
    """Whether the served model was trained on the synthetic demo (its ids are invented, so
    its per-customer answers are open without a key)."""
    service = bentoml.get_current_service()
    return getattr(service, "about", {}).get("mode") == Mode.DEMO


api.add_asgi_middleware(
    RequestGuard,
    max_body_bytes=CFG.max_body_bytes,
    paths=API_PATHS,
    max_json_depth=CFG.max_json_depth,
    read_timeout_s=CFG.read_timeout_s,
    api_key=API_KEY.encode() if API_KEY else None,
    open_per_user=demo_model,
)

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

import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import anyio
import bentoml
from bentoml.exceptions import BadInput, BentoMLException, ServiceUnavailable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shopflow.core import paths
from shopflow.core.config import load_params
from shopflow.core.errors import ConfigError
from shopflow.core.secrets import MIN_KEY_CHARS, Mode, read_secret
from shopflow.data.privacy import pseudonym_key, scrub_text
from shopflow.engine.bundle import load_engine, load_pair_scorer
from shopflow.engine.search import Candidates, Filters, Hit, SearchEngine
from shopflow.online.events import event_batch_model
from shopflow.online.experiment import CHALLENGER
from shopflow.online.router import Impression, impression, new_impression_id
from shopflow.online.runtime import OnlineRuntime
from shopflow.serving.answers import (
    Answer,
    EventsAccepted,
    Pair,
    ProductHit,
    describe,
    ranked,
    shown_hits,
)
from shopflow.serving.hardening import limit_headers, quiet_client_errors
from shopflow.serving.http import API_KEY_ENV, RequestGuard, UnknownProductsError, request_models
from shopflow.serving.measures import LOG_RECORDS, STAGE_SECONDS

ROOT = Path(__file__).resolve().parent.parent
PARAMS = load_params(os.environ.get("SHOPFLOW_PARAMS", ROOT / paths.PARAMS))
CFG = PARAMS.serving
MODEL_TAG = os.environ.get("SHOPFLOW_MODEL", "shopflow:latest")
CHALLENGER_TAG = os.environ.get("SHOPFLOW_CHALLENGER")  # an experiment's challenger, packed too
DEVICE = "cuda" if PARAMS.models.device == "cuda" else "cpu"
REQUESTS = request_models(CFG)
EVENTS = event_batch_model(PARAMS.online.max_events)
API_PATHS = ("/search", "/recommend", "/rank", "/events")
IMPRESSION_HEADER = "X-Impression-Id"
LOG = logging.getLogger("shopflow.service")
API_KEY = read_secret(API_KEY_ENV)
if API_KEY is not None and len(API_KEY) < MIN_KEY_CHARS:
    raise ConfigError(f"{API_KEY_ENV} is {len(API_KEY)} characters: use at least {MIN_KEY_CHARS}")
limit_headers(CFG.read_timeout_s, CFG.max_header_bytes)
quiet_client_errors()


Ranker = Callable[[SearchEngine], Awaitable[list[Hit]]]


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
    if CHALLENGER_TAG:
        challenger_bundle = bentoml.models.BentoModel(CHALLENGER_TAG)
    if CFG.adaptive_batching:
        scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        model = stored_model(type(self).bundle)
        self.engine = load_engine(model.path, DEVICE)
        self.challenger: SearchEngine | None = None
        self.challenger_version: str | None = None
        if CHALLENGER_TAG:
            other = stored_model(type(self).challenger_bundle)
            self.challenger = load_engine(other.path, DEVICE)
            self.challenger_version = str(
                other.info.metadata.get("model_version", other.tag.version)
            )
        if self.engine.reranker is not None and self.engine.candidates > CFG.max_batch_size:
            raise ValueError(
                f"reranker.candidates ({self.engine.candidates}) exceeds serving.max_batch_size "
                f"({CFG.max_batch_size}): one request's pairs must fit one batch"
            )
        self.about = describe(model, self.engine, CFG.adaptive_batching, bool(API_KEY))
        self.online = OnlineRuntime.start(
            PARAMS,
            lambda: pseudonym_key(Mode(self.about["mode"])),
            lambda kind, outcome, n: LOG_RECORDS.labels(kind=kind, outcome=outcome).inc(n),
        )
        spec = self.online.spec
        if spec is not None and spec.challenger.split(":")[1] != self.challenger_version:
            raise ValueError(
                f"experiment {spec.id} tests {spec.challenger} but SHOPFLOW_CHALLENGER is "
                f"{CHALLENGER_TAG}: serve the experiment's challenger"
            )
        self.about["experiment"] = None if spec is None else spec.model_dump()
        self.about["challenger_version"] = self.challenger_version
        self.ready = True

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    async def _scores(
        self,
        endpoint: str,
        query: str,
        found: Candidates,
        priors: list[float],
        engine: SearchEngine | None = None,
    ) -> list[float]:
        """The cross-encoder's scores of the candidates; without one, the feature ranker's
        or the first stage's, in this process (well under a millisecond: no scorer hop).
        The champion's pairs go to the batching scorer; a challenger scores in-process."""
        engine = engine or self.engine
        if engine.reranker is None or not found:
            return engine.local_scores(query, found, priors)
        started = time.perf_counter()
        pairs = [
            Pair(query=query, product_id=p, prior=s)
            for (p, _), s in zip(found, priors, strict=True)
        ]
        if CFG.adaptive_batching and engine is self.engine:
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
                engine.score_pairs,
                [p.query for p in pairs],
                [p.product_id for p in pairs],
                [p.prior for p in pairs],
            )
            scores = scores.tolist()
        STAGE_SECONDS.labels(endpoint=endpoint, stage="rerank").observe(
            time.perf_counter() - started
        )
        return scores

    async def _timed(self, rank: Ranker, engine: SearchEngine) -> tuple[list[Hit], float]:
        started = time.perf_counter()
        hits = await rank(engine)
        return hits, (time.perf_counter() - started) * 1000

    async def _try(
        self, rank: Ranker, challenger: SearchEngine
    ) -> tuple[tuple[list[Hit], float], str | None]:
        """The challenger's answer, or why it failed: a failing challenger never fails the
        shopper's request (the champion answers); the failure is logged with the impression
        and counted by the error-rate guardrail, which stops the experiment."""
        try:
            return await self._timed(rank, challenger), None
        except Exception as exc:  # whatever the challenger raised: the champion answers
            LOG.exception("the challenger failed; the champion answers")
            return ([], 0.0), f"{type(exc).__name__}: {exc}"[:300]

    async def _served(
        self,
        ctx: bentoml.Context,
        surface: str,
        query: str | None,
        k: int,
        unit_ids: tuple[str | None, str | None],
        rank: Ranker,
        challenger_serves: bool = True,
    ) -> Answer:
        """Answer with what the unit's arm shows, and log it as an impression.

        Outside an experiment only the champion ranks. In one, the arm decides: A/B shows one
        model's list, interleaving merges both, shadow shows the champion's and ranks with
        the challenger after the answer is sent (the shopper never waits for it)."""
        started = time.perf_counter()
        online = self.online
        unit = online.unit(*unit_ids)
        challenger = self.challenger if challenger_serves else None
        assignment = online.assign(unit[0], challenger is not None)
        arm = assignment.arm
        shown, shown_ms = ([], 0.0) if arm == CHALLENGER else await self._timed(rank, self.engine)
        other: tuple[list[Hit], float] = ([], 0.0)
        failed: str | None = None
        if challenger is not None and arm in ("interleaved", CHALLENGER):
            other, failed = await self._try(rank, challenger)
            if failed and arm == CHALLENGER:  # the shopper gets the champion's answer
                shown, shown_ms = await self._timed(rank, self.engine)
        impression_id = new_impression_id()
        rate = PARAMS.online.exploration_rate if unit[0] is not None else 0.0

        def build(challenger_hits: tuple[list[Hit], float], error: str | None) -> Impression:
            return impression(
                surface=surface,
                query=None if query is None else scrub_text(query),  # PII typed into search
                k=k,
                unit=unit,
                assignment=assignment,
                spec=online.spec,
                champion=ranked(shown, self.about["model_version"], shown_ms),
                challenger=None
                if challenger is None or error
                else ranked(challenger_hits[0], self.challenger_version, challenger_hits[1]),
                exploration_rate=rate,
                latency_ms=(time.perf_counter() - started) * 1000,
                impression_id=impression_id,
                challenger_error=error,
            )

        if arm == "shadowed" and challenger is not None:
            # The order shown is the record's (exploration replays from the impression id);
            # the record itself is written once the challenger has ranked, after the answer.
            items = build(([], 0.0), None).items

            async def shadow() -> None:
                online.record(build(*await self._try(rank, challenger)))

            ctx.response.background.add_task(shadow)
        else:
            record = build(other, failed)
            online.record(record)
            items = record.items
        hits = shown_hits(items, (*other[0], *shown))
        ctx.response.headers[IMPRESSION_HEADER] = impression_id
        return Answer(
            products=[ProductHit(**h.__dict__) for h in hits],
            model_version=self.about["model_version"],
            impression_id=impression_id,
        )

    @bentoml.api(input_spec=REQUESTS.search)
    async def search(
        self,
        ctx: bentoml.Context,
        query: str,
        user_key: str | None = None,
        session_id: str | None = None,
        k: int = 10,
        filters=None,
    ) -> Answer:
        """Top k products for a query: retrieve over the catalogue, rerank the candidates."""
        chosen = Filters(
            category=filters.category if filters else None,
            min_price=filters.price.min if filters and filters.price else None,
            max_price=filters.price.max if filters and filters.price else None,
        )

        async def rank(engine: SearchEngine) -> list[Hit]:
            recent = engine.recent(user_key)
            started = time.perf_counter()
            found, priors = (
                await anyio.to_thread.run_sync(
                    lambda: engine.candidates_for([query], k, [recent] if recent else None, chosen)
                )
            )[0]
            STAGE_SECONDS.labels(endpoint="search", stage="retrieve").observe(
                time.perf_counter() - started
            )
            scores = await self._scores("search", query, found, priors, engine)
            return engine.merge(found, scores, k)

        return await self._served(ctx, "search", query, k, (user_key, session_id), rank)

    @bentoml.api(input_spec=REQUESTS.recommend)
    async def recommend(
        self,
        ctx: bentoml.Context,
        user_key: str | None = None,
        session_id: str | None = None,
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

        async def rank(model: SearchEngine) -> list[Hit]:
            found = await anyio.to_thread.run_sync(
                lambda: model.recommend([user_key], k, [recent] if recent else None)
            )
            return found[0]

        other = self.challenger
        serves = (
            other is not None
            and other.recommender is not None
            and (bool(recent) or (user_key is not None and other.recommender.knows(user_key)))
        )
        return await self._served(ctx, "recommend", None, k, (user_key, session_id), rank, serves)

    @bentoml.api(input_spec=REQUESTS.rank)
    async def rank(
        self,
        ctx: bentoml.Context,
        query: str,
        product_ids: list[str],
        user_key: str | None = None,
        session_id: str | None = None,
    ) -> Answer:
        """The given products reordered for the query (for shops with their own retrieval)."""
        unknown = self.engine.catalogue.unknown(product_ids)
        if unknown:
            raise BadInput(str(UnknownProductsError("product_ids", unknown)))

        async def rank(engine: SearchEngine) -> list[Hit]:
            cands, priors = await anyio.to_thread.run_sync(
                engine.rank_candidates, query, product_ids
            )
            scores = await self._scores("rank", query, cands, priors, engine)
            return engine.merge(cands, scores, len(cands))

        k = len(dict.fromkeys(product_ids))
        return await self._served(ctx, "rank", query, k, (user_key, session_id), rank)

    @bentoml.api(input_spec=EVENTS)
    async def events(self, ctx: bentoml.Context, events: list) -> EventsAccepted:
        """Clicks, add-to-carts and purchases on shown products (202; idempotent on event_id)."""
        try:
            counts = self.online.accept(events)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        ctx.response.status_code = 202
        return EventsAccepted(**counts)


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
    keyed_paths=("/events",),
    max_body_bytes=CFG.max_body_bytes,
    paths=API_PATHS,
    max_json_depth=CFG.max_json_depth,
    read_timeout_s=CFG.read_timeout_s,
    api_key=API_KEY.encode() if API_KEY else None,
    open_per_user=demo_model,
)

"""The service's HTTP contract: request models with their limits, and the guard in front of them.

Bad input gets a 4xx that names what is wrong, never a 500:
- the request models (pydantic) reject wrong types, missing fields, an empty or whitespace
  query, a query over `max_query_chars`, k out of range, too many products; BentoML answers
  their errors with 400 and the field that failed;
- `RequestGuard`, an ASGI middleware, answers before the body reaches BentoML: 413 for a body
  over `max_body_bytes` (declared or streamed), 415 for a body that is not JSON by its
  Content-Type, 400 for bytes that are not UTF-8 or not JSON;
- unknown product ids are a 400 from the service that lists them (`UnknownProductsError`).

The limits come from the `serving` section of params.yaml (`request_models`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shopflow.core.config import ServingConfig


class UnknownProductsError(ValueError):
    """Product ids the catalogue does not hold."""

    def __init__(self, field: str, ids: list[str]) -> None:
        shown = ids[:20]
        more = f" and {len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
        super().__init__(f"{field}: unknown product ids {shown}{more}")
        self.ids = ids


ProductId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
UserKey = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class PriceRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def ordered(self) -> PriceRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"price: min {self.min} is above max {self.max}")
        return self


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
        | None
    ) = None
    price: PriceRange | None = None


@dataclass(frozen=True)
class RequestModels:
    search: type[BaseModel]
    recommend: type[BaseModel]
    rank: type[BaseModel]


def request_models(cfg: ServingConfig) -> RequestModels:
    """Request models whose limits are the given serving config's."""
    QueryText = Annotated[  # noqa: N806 (a type alias, sized by the config)
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=cfg.max_query_chars)
    ]
    TopK = Annotated[int, Field(ge=1, le=cfg.max_k)]  # noqa: N806

    class SearchRequest(BaseModel):
        """Retrieve over the whole catalogue, rerank the top candidates, return the top k."""

        model_config = ConfigDict(extra="forbid", strict=True)
        query: QueryText
        user_key: UserKey | None = None
        k: TopK = 10
        filters: SearchFilters | None = None

    class RecommendRequest(BaseModel):
        """Next products for a user (by key) or for a list of recent products (latest last)."""

        model_config = ConfigDict(extra="forbid", strict=True)
        user_key: UserKey | None = None
        recent_product_ids: (
            Annotated[list[ProductId], Field(min_length=1, max_length=cfg.max_recent_products)]
            | None
        ) = None
        k: TopK = 10

        @model_validator(mode="after")
        def someone(self) -> RecommendRequest:
            if self.user_key is None and self.recent_product_ids is None:
                raise ValueError("give user_key or recent_product_ids (or both)")
            return self

    class RankRequest(BaseModel):
        """Reorder the given products for a query."""

        model_config = ConfigDict(extra="forbid", strict=True)
        query: QueryText
        product_ids: Annotated[
            list[ProductId], Field(min_length=1, max_length=cfg.max_rank_products)
        ]

    return RequestModels(SearchRequest, RecommendRequest, RankRequest)


JSON_TYPES = ("application/json",)


class RequestGuard:
    """ASGI middleware: body size, media type and encoding checks for the POST endpoints."""

    def __init__(self, app, max_body_bytes: int = 65_536, paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.paths = set(paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media not in JSON_TYPES:
            await respond(
                send, 415, f"Content-Type {media!r} is not accepted: send JSON (application/json)"
            )
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await respond(
                send,
                413,
                f"request body of {declared} bytes is over the limit of "
                f"{self.max_body_bytes} bytes",
            )
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await respond(
                    send, 413, f"request body is over the limit of {self.max_body_bytes} bytes"
                )
                return
        problem = body_problem(body)
        if problem:
            await respond(send, 400, problem)
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def body_problem(body: bytes) -> str | None:
    """Why a request body is not a JSON object, or None."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"request body is not UTF-8 (byte {exc.start}: {body[exc.start : exc.start + 1]!r})"
    if not text.strip():
        return "request body is empty: send a JSON object"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if not isinstance(value, dict):
        return f"request body must be a JSON object, not {type(value).__name__}"
    return None


async def respond(send, status: int, message: str) -> None:
    payload = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})

"""The service's HTTP contract: request models with their limits, and the guard in front of them.

Bad input gets a 4xx that names what is wrong, never a 500:
- the request models (pydantic) reject wrong types, missing fields, an empty or whitespace
  query, a query over `max_query_chars`, k out of range, too many products; BentoML answers
  their errors with 400 and the field that failed;
- `RequestGuard`, an ASGI middleware, answers before the body reaches BentoML: 413 for a body
  over `max_body_bytes` (declared or streamed), 415 for a body that is not JSON by its
  Content-Type, 408 for a body that does not arrive within `read_timeout_s`, 400 for bytes
  that are not UTF-8, not JSON or nested deeper than `max_json_depth` (checked without
  recursion, so no body can exhaust the parser's stack), 401/403 for a request about a
  customer (`user_key`) without a valid API key;
- unknown product ids are a 400 from the service that lists them (`UnknownProductsError`).

Per-customer answers need `SHOPFLOW_API_KEY` (`Authorization: Bearer <key>` or `X-API-Key`),
compared in constant time. Only a model trained on the synthetic demo answers them without a
key. The limits come from the `serving` section of params.yaml (`request_models`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shopflow.core.config import ServingConfig
from shopflow.core.errors import preview
from shopflow.core.secrets import same_secret

log = logging.getLogger(__name__)
API_KEY_ENV = "SHOPFLOW_API_KEY"
PER_USER_FIELD = "user_key"


class UnknownProductsError(ValueError):
    """Product ids the catalogue does not hold."""

    def __init__(self, field: str, ids: list[str]) -> None:
        shown = ids[:20]
        more = f" and {len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
        super().__init__(f"{field}: unknown product ids {shown}{more}")
        self.ids = ids


ProductId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
UserKey = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# The client's session: the experiment unit of a shopper without a user_key; pseudonymised
# (keyed hash) before it is logged.
SessionId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class PriceRange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def ordered(self) -> PriceRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"price: min {self.min} is above max {self.max}")
        return self


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
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
        session_id: SessionId | None = None
        k: TopK = 10
        filters: SearchFilters | None = None

    class RecommendRequest(BaseModel):
        """Next products for a user (by key) or for a list of recent products (latest last)."""

        model_config = ConfigDict(extra="forbid", strict=True)
        user_key: UserKey | None = None
        session_id: SessionId | None = None
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
        user_key: UserKey | None = None
        session_id: SessionId | None = None

    return RequestModels(SearchRequest, RecommendRequest, RankRequest)


JSON_TYPES = ("application/json",)


class RequestGuard:
    """ASGI middleware: size, media type, read time, encoding, depth and per-customer access
    checks for the POST endpoints, each answered with a 4xx that names the problem."""

    def __init__(
        self,
        app,
        max_body_bytes: int = 65_536,
        paths: tuple[str, ...] = (),
        max_json_depth: int = 16,
        read_timeout_s: float = 10.0,
        api_key: bytes | None = None,
        open_per_user: Callable[[], bool] = lambda: False,
        keyed_paths: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.paths = set(paths)
        self.max_json_depth = max_json_depth
        self.read_timeout_s = read_timeout_s
        self.api_key = api_key
        self.open_per_user = open_per_user
        self.keyed_paths = set(keyed_paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media not in JSON_TYPES:
            await respond(
                send,
                415,
                f"Content-Type {preview(media, 60)} is not accepted: send JSON (application/json)",
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
        with anyio.move_on_after(self.read_timeout_s) as reading:
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
        if reading.cancelled_caught:
            await respond(
                send,
                408,
                f"request body did not arrive within {self.read_timeout_s:g} s "
                f"({len(body)} bytes of {declared or 'an unknown length'} came)",
            )
            return
        value, problem = parse_body(body, self.max_json_depth)
        if problem:
            await respond(send, 400, problem)
            return
        keyed = scope["path"] in self.keyed_paths
        if keyed or value.get(PER_USER_FIELD) is not None:
            what = f"POST {scope['path']}" if keyed else PER_USER_FIELD
            denied = self.access_problem(headers, what)
            if denied:
                await respond(send, *denied)
                return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def access_problem(
        self, headers: dict[str, str], what: str = PER_USER_FIELD
    ) -> tuple[int, str] | None:
        """Why a request about a customer (or one that writes what training reads: `what`)
        may not be answered, or None. The key is compared in constant time; no answer says
        how much of a wrong key matched."""
        given = presented_key(headers)
        if self.api_key is None:
            if self.open_per_user():
                return None
            instead = "; send recent_product_ids instead" if what == PER_USER_FIELD else ""
            return 403, (
                f"{what}: this service answers no such request because it has no API key "
                f"configured (set {API_KEY_ENV} where it runs){instead}"
            )
        if given is None:
            return 401, (
                f"{what}: this request needs the API key: send "
                "`Authorization: Bearer <key>` or `X-API-Key: <key>`"
            )
        if not same_secret(given, self.api_key):
            return 401, "the API key sent is not valid"
        return None


def presented_key(headers: dict[str, str]) -> str | None:
    """The API key a request carries (`Authorization: Bearer ...` or `X-API-Key`), or None."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip() or None


def json_depth_over(text: str, limit: int) -> bool:
    """Whether JSON `text` nests objects/arrays deeper than `limit` (brackets inside strings
    do not count). A linear scan, so no input can exhaust a recursive parser."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON value")


def parse_body(body: bytes, max_depth: int = 16) -> tuple[dict, str | None]:
    """A request body as a JSON object, or ({}, why it is not one)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {}, (
            f"request body is not UTF-8 (byte {exc.start}: {body[exc.start : exc.start + 1]!r})"
        )
    if not text.strip():
        return {}, "request body is empty: send a JSON object"
    if json_depth_over(text, max_depth):
        return {}, f"request body nests deeper than {max_depth} levels: send a flat JSON object"
    try:
        value = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        return {}, f"request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:  # unreachable after the depth check; kept as a last line
        return {}, "request body nests too deeply"
    except ValueError as exc:  # NaN / Infinity, which Python's parser accepts and JSON does not
        return {}, f"request body is not JSON: {exc}"
    if not isinstance(value, dict):
        return {}, f"request body must be a JSON object, not {type(value).__name__}"
    return value, None


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

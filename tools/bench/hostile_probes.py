"""The hostile-input suite, as data: what a shop's security reviewer would send the service.

Malformed and deeply nested JSON, bad encodings, oversized bodies and fields, wrong types at
every level, every HTTP method, odd headers, requests about a customer without, with a wrong
and with the right API key, unknown paths. Each probe names the status it must get and a
phrase the answer must hold, so a 4xx that does not say what is wrong fails as surely as a
5xx. `tools.bench.hostile` sends them; the service tests run them against the real Bento.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from shopflow.core.config import ServingConfig

JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Probe:
    """One request and what the service must answer: `status`, with `says` in the body."""

    name: str
    kind: str
    path: str
    body: bytes = b""
    status: int = 400
    says: str = ""
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


Row = tuple  # (name, path, body, status, says) or with headers last


def probes(cfg: ServingConfig, product_ids: list[str], user_key: str, api_key: str) -> list[Probe]:
    """The hostile-input suite for a service with these limits, catalogue products, a known
    customer and its API key."""
    good = _json({"query": "grey sofa", "k": 5})
    p1, p2 = product_ids[0], product_ids[1]
    auth = {**JSON, "Authorization": f"Bearer {api_key}"}
    depth, big, qmax = cfg.max_json_depth, cfg.max_body_bytes, cfg.max_query_chars
    nest = [depth + 1, 100, 1_000, 30_000]
    malformed = [
        b"{",
        b"}",
        b'{"query": }',
        b'{"query": "sofa",}',
        b"{'query': 'sofa'}",
        b'{"query": "sofa"',
        b"nul",
        b'{"query": NaN}',
        b"{query: sofa}",
        b'{"a":1}{"b":2}',
        b'{"query": "sofa" "k": 5}',
        b"\x00\x00",
        b'{"query": "\\x"}',
    ]
    rows: dict[str, list[Row]] = {
        "malformed": [
            *[(f"malformed JSON {i}", "/search", t, 400, "not JSON")
              for i, t in enumerate(malformed)],
            ("a JSON array", "/search", b"[1, 2]", 400, "JSON object"),
            ("a JSON string", "/search", b'"sofa"', 400, "JSON object"),
            ("a JSON number", "/rank", b"3", 400, "JSON object"),
            ("JSON null", "/recommend", b"null", 400, "JSON object"),
            ("empty body", "/search", b"", 400, "empty"),
            ("whitespace body", "/rank", b"   \n ", 400, "empty"),
        ],
        "nesting": [
            *[(f"{n} nested arrays", "/search", b'{"query": ' + b"[" * n + b"]" * n + b"}", 400,
               "nests deeper") for n in nest],
            ("nesting in filters", "/search",
             b'{"query": "a", "filters": ' + b'{"x": ' * 40 + b"1" + b"}" * 41, 400,
             "nests deeper"),
            ("unclosed deep nesting", "/recommend", b"[" * 20_000, 400, "nests deeper"),
            ("brackets inside a string are text", "/search", {"query": "[" * 40 + "sofa"}, 200, ""),
        ],
        "encoding": [
            ("latin-1 bytes", "/search", b'{"query": "caf\xe9"}', 400, "not UTF-8"),
            ("a lone continuation byte", "/search", b'{"query": "\x80"}', 400, "not UTF-8"),
            ("UTF-16", "/search", good.decode().encode("utf-16"), 400, "not UTF-8"),
            ("overlong UTF-8", "/search", b'{"query": "\xc0\xaf"}', 400, "not UTF-8"),
            ("UTF-8 byte order mark", "/search", b"\xef\xbb\xbf" + good, 400, "JSON"),
            ("escaped lone surrogate", "/search", b'{"query": "\\ud800 sofa"}', 400,
             "Invalid JSON"),
            ("NUL inside the query", "/search", {"query": "so\x00fa"}, 200, ""),
            ("emoji query", "/search", {"query": "\U0001f6cb sofa"}, 200, ""),
            ("right-to-left query", "/search", {"query": "\u0623\u0631\u064a\u0643\u0629"}, 200,
             ""),
            ("control characters", "/search", {"query": "\x1b[31msofa\x07"}, 200, ""),
        ],
        "size": [
            ("body over the limit", "/search", {"query": "a" * (big + 10)}, 413, "over the limit"),
            ("declared length over the limit", "/rank", good, 413, "over the limit",
             {**JSON, "Content-Length": str(big * 10)}),
            ("query one over the limit", "/search", {"query": "a" * (qmax + 1)}, 400,
             f"at most {qmax}"),
            ("query at the limit", "/search", {"query": "a" * qmax}, 200, ""),
            ("k zero", "/search", {"query": "sofa", "k": 0}, 400, "greater than or equal"),
            ("k negative", "/search", {"query": "sofa", "k": -5}, 400, "greater than or equal"),
            ("k over the limit", "/search", {"query": "sofa", "k": cfg.max_k + 1}, 400,
             "less than or equal"),
            ("k huge", "/recommend", {"recent_product_ids": [p1], "k": 10**30}, 400, "k"),
            ("too many products to rank", "/rank",
             {"query": "a", "product_ids": [p1] * (cfg.max_rank_products + 1)}, 400, "at most"),
            ("too many recent products", "/recommend",
             {"recent_product_ids": [p1] * (cfg.max_recent_products + 1)}, 400, "at most"),
            ("empty product list", "/rank", {"query": "a", "product_ids": []}, 400, "at least 1"),
            ("product id too long", "/rank", {"query": "a", "product_ids": ["x" * 201]}, 400,
             "at most 200"),
            ("user key too long", "/recommend", {"user_key": "u" * 201}, 400, "at most 200", auth),
        ],
        "types": [
            ("query a number", "/search", {"query": 42}, 400, "valid string"),
            ("query a list", "/search", {"query": ["sofa"]}, 400, "valid string"),
            ("query null", "/search", {"query": None}, 400, "valid string"),
            ("query an object", "/search", {"query": {"$ne": ""}}, 400, "valid string"),
            ("k a string", "/search", {"query": "sofa", "k": "5"}, 400, "valid integer"),
            ("k a float", "/search", {"query": "sofa", "k": 5.5}, 400, "valid integer"),
            ("k a boolean", "/search", {"query": "sofa", "k": True}, 400, "valid integer"),
            ("filters a string", "/search", {"query": "a", "filters": "cheap"}, 400, "filters"),
            ("filters a list", "/search", {"query": "a", "filters": []}, 400, "filters"),
            ("category a number", "/search", {"query": "a", "filters": {"category": 3}}, 400,
             "string"),
            ("price a string", "/search", {"query": "a", "filters": {"price": "10"}}, 400, "price"),
            ("price.min a string", "/search",
             {"query": "a", "filters": {"price": {"min": "100"}}}, 400, "valid number"),
            ("price.max a string", "/search",
             {"query": "a", "filters": {"price": {"max": "9"}}}, 400, "valid number"),
            ("price.min a boolean", "/search",
             {"query": "a", "filters": {"price": {"min": True}}}, 400, "valid number"),
            ("price.min negative", "/search",
             {"query": "a", "filters": {"price": {"min": -1}}}, 400, "greater than or equal"),
            ("price min above max", "/search",
             {"query": "a", "filters": {"price": {"min": 9, "max": 1}}}, 400, "above max"),
            ("unknown filter", "/search", {"query": "a", "filters": {"colour": "red"}}, 400,
             "Extra"),
            ("unknown price field", "/search",
             {"query": "a", "filters": {"price": {"avg": 1}}}, 400, "Extra"),
            ("unknown field", "/search", {"query": "a", "debug": True}, 400, "Extra"),
            ("product ids a string", "/rank", {"query": "a", "product_ids": p1}, 400,
             "valid array"),
            ("product id a number", "/rank", {"query": "a", "product_ids": [7]}, 400,
             "valid string"),
            ("product id null", "/rank", {"query": "a", "product_ids": [None]}, 400,
             "valid string"),
            ("recent products an object", "/recommend", {"recent_product_ids": {"a": 1}}, 400,
             "valid array"),
            ("nobody to recommend for", "/recommend", {"k": 5}, 400,
             "user_key or recent_product_ids"),
            ("missing query", "/search", {"k": 5}, 400, "Field required"),
            ("unknown product", "/rank", {"query": "a", "product_ids": ["no-such-product"]}, 400,
             "no-such-product"),
            ("unknown recent product", "/recommend", {"recent_product_ids": ["ghost-1"]}, 400,
             "ghost-1"),
            ("blank query", "/search", {"query": "   "}, 400, "query"),
        ],
        "paths": [
            (f"path {path}", path, good, 404, "Not Found")
            for path in ("/admin", "/..%2f..%2fetc%2fpasswd", "/search%00", "/x.bak", "/v1/search")
        ] + [("trailing slash redirects", "/search/", good, 307, "")],
        "headers": [
            ("form media type", "/search", b"query=sofa", 415, "not accepted",
             {"Content-Type": "application/x-www-form-urlencoded"}),
            ("text media type", "/search", good, 415, "not accepted",
             {"Content-Type": "text/plain"}),
            ("multipart media type", "/rank", b"--x--", 415, "not accepted",
             {"Content-Type": "multipart/form-data; boundary=x"}),
            ("pickle media type", "/search", b"\x80\x04N.", 415, "not accepted",
             {"Content-Type": "application/vnd.bentoml+pickle"}),
            ("no media type (JSON assumed)", "/search", good, 200, "", {}),
            ("JSON with a charset", "/search", good, 200, "",
             {"Content-Type": "application/json; charset=utf-8"}),
            ("a 7 KB header", "/search", good, 200, "", {**JSON, "X-Padding": "p" * 7000}),
            ("headers over the limit", "/search", good, 431, "over",
             {**JSON, "X-Padding": "p" * (cfg.max_header_bytes + 10)}),
            ("60 extra headers", "/search", good, 200, "",
             {**JSON, **{f"X-H{i}": str(i) for i in range(60)}}),
            ("X-Forwarded-For spoof", "/search", good, 200, "",
             {**JSON, "X-Forwarded-For": "127.0.0.1, 10.0.0.1"}),
        ],
        "auth": _auth_rows(user_key, api_key, auth, [p1, p2]),
    }  # fmt: skip
    out = [
        Probe(row[0], kind, row[1], _bytes(row[2]), row[3], row[4],
              headers=dict(row[5]) if len(row) > 5 else dict(JSON))
        for kind, table in rows.items()
        for row in table
    ]  # fmt: skip
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        out.append(
            Probe(f"{method} /search", "methods", "/search", b"", 405, "Not Allowed", method)
        )
    out.append(Probe("PUT /recommend", "methods", "/recommend", good, 405, "Not Allowed", "PUT"))
    out.append(Probe("POST /version", "methods", "/version", good, 405, "Not Allowed"))
    return out


def _auth_rows(user_key: str, api_key: str, auth: dict, products: list[str]) -> list[Row]:
    """A customer's data needs the API key: missing, wrong, malformed, misplaced and right."""
    personal = {"user_key": user_key, "k": 5}
    wrong = "0" * len(api_key)
    return [
        ("user key without an API key", "/recommend", personal, 401, "needs the API key"),
        ("search by user key without an API key", "/search",
         {"query": "sofa", "user_key": user_key}, 401, "needs the API key"),
        ("wrong API key", "/recommend", personal, 401, "not valid",
         {**JSON, "Authorization": f"Bearer {wrong}"}),
        ("API key one character short", "/recommend", personal, 401, "not valid",
         {**JSON, "Authorization": f"Bearer {api_key[:-1]}"}),
        ("empty bearer", "/recommend", personal, 401, "needs the API key",
         {**JSON, "Authorization": "Bearer"}),
        ("basic auth instead", "/recommend", personal, 401, "needs the API key",
         {**JSON, "Authorization": f"Basic {api_key}"}),
        ("key as a query parameter", f"/recommend?api_key={api_key}", personal, 401,
         "needs the API key"),
        ("right API key (bearer)", "/recommend", personal, 200, "", auth),
        ("right API key (X-API-Key)", "/recommend", personal, 200, "",
         {**JSON, "X-API-Key": api_key}),
        ("right key, unknown customer", "/recommend", {"user_key": "stranger"}, 400, "no history",
         auth),
        ("no user key needs no API key", "/recommend", {"recent_product_ids": products, "k": 5},
         200, ""),
    ]  # fmt: skip


def _bytes(body: object) -> bytes:
    return body if isinstance(body, bytes) else _json(body)

"""The parts of serving that need no model: vector search, catalogue filters, request limits
and the request guard."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from shopflow.engine.search import Catalogue, Filters
from shopflow.models.vector_index import VectorIndex, exact_top_k, recall_at
from shopflow.serving.http import RequestGuard, json_depth_over, parse_body, request_models
from shopflow.serving.model_store import decide_onnx
from tests.conftest import tiny_params

pytestmark = pytest.mark.unit


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_exact_top_k_orders_by_score_and_honours_mask_and_exclusions():
    items = unit_vectors(50)
    queries = items[:3]
    hits = exact_top_k(queries, items, 5)
    assert [h[0][0] for h in hits] == [0, 1, 2]  # each item is its own nearest
    assert all(s[1] >= t[1] for row in hits for s, t in itertools.pairwise(row))
    allowed = np.zeros(50, bool)
    allowed[10:20] = True
    masked = exact_top_k(queries, items, 5, allowed, exclude=[[10, 11], [], []])
    assert all(10 <= p < 20 for row in masked for p, _ in row)
    assert not {10, 11} & {p for p, _ in masked[0]}
    assert len(exact_top_k(queries, items, 20, allowed)[0]) == 10  # fewer eligible than k


def test_hnsw_index_agrees_with_exact_search_and_falls_back_for_narrow_filters():
    items = unit_vectors(3000, 32)
    index = VectorIndex(items, ann_min_items=1000)
    assert index.kind == "hnsw"
    assert recall_at(index, unit_vectors(100, 32, seed=1), k=10) > 0.9
    allowed = np.zeros(3000, bool)
    allowed[[5, 77, 1234]] = True  # far too narrow for over-fetching to find
    hits = index.search(unit_vectors(2, 32, seed=2), 10, allowed)
    assert [sorted(p for p, _ in row) for row in hits] == [[5, 77, 1234]] * 2
    assert VectorIndex(items, ann_min_items=10_000).kind == "exact"


def test_a_per_item_bias_reorders_exact_and_hnsw_search_alike():
    items = unit_vectors(3000, 32)
    queries = unit_vectors(20, 32, seed=3)
    bias = np.zeros(3000, np.float32)
    bias[[42, 4242 % 3000]] = 5.0  # two "best-sellers" that outweigh any cosine
    exact = exact_top_k(queries, items, 10, bias=bias)
    assert all({p for p, _ in row[:2]} == {42, 4242 % 3000} for row in exact)
    hnsw = VectorIndex(items, ann_min_items=1000).search(
        queries, 10, exclude=[[42]] * 20, bias=bias
    )
    assert all(row[0][0] == 4242 % 3000 and 42 not in {p for p, _ in row} for row in hnsw)
    rest = [
        len({p for p, _ in h[1:]} & {p for p, _ in e[2:]}) / 8
        for h, e in zip(hnsw, exact, strict=True)
    ]  # below the best-sellers, the graph finds the exact neighbours
    assert np.mean(rest) > 0.8


def test_catalogue_filters_by_category_prefix_and_price():
    products = pd.DataFrame(
        {
            "product_id": ["a", "b", "c", "d"],
            "title": ["A", "B", "C", "D"],
            "category": ["Garden > Hoses", "Garden", "Gardening Books", None],
            "price": [10.0, 30.0, 5.0, None],
            "brand": None,
            "description": None,
            "attributes": None,
        }
    )
    catalogue = Catalogue(products)
    assert catalogue.allowed(Filters()) is None
    assert catalogue.allowed(Filters(category="garden")).tolist() == [True, True, False, False]
    assert catalogue.allowed(Filters(max_price=20)).tolist() == [True, False, True, False]
    both = Filters(category="Garden", min_price=20)
    assert catalogue.allowed(both).tolist() == [False, True, False, False]
    assert catalogue.unknown(["a", "zz"]) == ["zz"]


def test_request_models_take_their_limits_from_the_config():
    limits = {"max_k": 5, "max_query_chars": 8, "max_rank_products": 2}
    models = request_models(tiny_params().serving.model_copy(update=limits))
    assert models.search.model_validate({"query": " lamp "}).query == "lamp"
    for bad in (
        {"query": "x" * 9},
        {"query": "lamp", "k": 6},
        {"query": "lamp", "k": 2.5},
        {"query": "lamp", "filters": {"price": {"min": -1}}},
    ):
        with pytest.raises(ValidationError):
            models.search.model_validate(bad)
    with pytest.raises(ValidationError, match="at most 2"):
        models.rank.model_validate({"query": "lamp", "product_ids": ["a", "b", "c"]})
    with pytest.raises(ValidationError, match="user_key or recent_product_ids"):
        models.recommend.model_validate({"k": 3})


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\xff", "not UTF-8"),
        (b"", "empty"),
        (b"{", "not JSON"),
        (b"3", "JSON object"),
        (b'{"a": 1}', None),
        (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "deeper than 16"),
        (b'{"a": ' + b"[" * 200_000, "deeper than 16"),  # never reaches the parser
    ],
)
def test_parse_body_names_what_is_wrong(body, says):
    value, problem = parse_body(body)
    assert problem is None if says is None else says in problem
    assert (value == {}) == (says is not None)


def test_json_depth_ignores_brackets_inside_strings():
    assert not json_depth_over('{"q": "[[[[[[[[ {{{{ \\" [[["}', 3)
    assert json_depth_over('{"a": {"b": {"c": {}}}}', 3)
    assert not json_depth_over('{"a": {"b": {"c": {}}}}', 4)


def test_request_guard_checks_size_type_and_encoding_and_passes_good_bodies_intact():
    async def echo(request):
        return JSONResponse({"got": json.loads(await request.body())})

    app = Starlette(
        routes=[Route("/search", echo, methods=["POST"]), Route("/other", echo, methods=["POST"])]
    )
    client = TestClient(RequestGuard(app, max_body_bytes=1024, paths=("/search",)))
    ok = client.post(
        "/search",
        content=b'{"query": "lamp"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200 and ok.json() == {"got": {"query": "lamp"}}
    big = client.post("/search", content=b'{"q": "' + b"x" * 2000 + b'"}')
    assert big.status_code == 413 and "1024" in big.json()["error"]
    form = client.post("/search", content=b"q=1", headers={"Content-Type": "text/plain"})
    assert form.status_code == 415
    assert client.post("/search", content=b"\xfe{}").status_code == 400
    assert client.post("/other", content=b'{"x": 1}').status_code == 200  # not guarded


def guarded(api_key: bytes | None, demo: bool) -> TestClient:
    async def echo(request):
        return JSONResponse({"got": json.loads(await request.body())})

    app = Starlette(routes=[Route("/recommend", echo, methods=["POST"])])
    guard = RequestGuard(app, paths=("/recommend",), api_key=api_key, open_per_user=lambda: demo)
    return TestClient(guard)


def test_a_request_about_a_customer_needs_the_api_key_unless_the_model_is_a_demo():
    key = b"k" * 40
    personal = b'{"user_key": "u_1"}'
    anonymous = b'{"recent_product_ids": ["p1"]}'
    for client in (guarded(key, demo=False), guarded(key, demo=True)):
        assert client.post("/recommend", content=anonymous).status_code == 200
        missing = client.post("/recommend", content=personal)
        assert missing.status_code == 401 and "needs the API key" in missing.json()["error"]
        wrong = client.post("/recommend", content=personal, headers={"X-API-Key": "k" * 39})
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
        for header in ({"Authorization": f"Bearer {key.decode()}"}, {"X-API-Key": key.decode()}):
            assert client.post("/recommend", content=personal, headers=header).status_code == 200
    closed = guarded(None, demo=False).post("/recommend", content=personal)
    assert closed.status_code == 403 and "SHOPFLOW_API_KEY" in closed.json()["error"]
    assert guarded(None, demo=True).post("/recommend", content=personal).status_code == 200
    assert guarded(None, demo=False).post("/recommend", content=anonymous).status_code == 200
    nan = guarded(None, demo=True).post("/recommend", content=b'{"k": NaN}')
    assert nan.status_code == 400 and "NaN is not a JSON value" in nan.json()["error"]


def test_int8_is_only_chosen_with_a_measured_drop_below_the_limit():
    checks = {"int8": {"ndcg_drop": 0.002}}
    assert decide_onnx("int8", checks, 0.005)[0] == "int8"
    chosen, reason = decide_onnx("int8", {"int8": {"ndcg_drop": 0.005}}, 0.005)
    assert chosen == "fp32" and "not below" in reason
    assert decide_onnx("int8", {}, 0.005) == (
        "fp32",
        "no judged test queries to measure the int8 NDCG@10 drop on",
    )
    assert decide_onnx("fp32", {}, 0.005)[0] == "fp32"
    assert decide_onnx("none", checks, 0.005)[0] == "none"


def test_reciprocal_rank_fusion_adds_one_over_k_plus_rank():
    from shopflow.engine.fusion import order_of, reciprocal_rank_fusion

    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "d"]], k=1.0)
    assert [p for p, _ in fused] == ["c", "a", "b", "d"]  # c: 1/4 + 1/2; a: 1/2; b: 1/3; d: 1/3
    assert dict(fused)["c"] == pytest.approx(1 / 4 + 1 / 2)
    assert [p for p, _ in reciprocal_rank_fusion([["a", "b"], ["b", "a"]], depth=1)] == ["a"]
    assert order_of(["x", "y", "z"], np.array([0.0, 2.0, 1.0]), positive_only=True) == ["y", "z"]


def test_a_bento_of_the_same_model_is_reused_only_while_its_sources_are_unchanged(
    tmp_path, monkeypatch
):
    from types import SimpleNamespace

    from shopflow.serving import bento_build

    (tmp_path / "bento").mkdir()
    bentofile = tmp_path / "bento" / "bentofile.yaml"
    bentofile.write_text(
        'include:\n  - "bento/service.py"\npython:\n  requirements_txt: "bento/requirements.txt"\n'
    )
    (tmp_path / "bento" / "service.py").write_text("answer = 1\n")
    (tmp_path / "bento" / "requirements.txt").write_text("numpy==2.0\n")
    monkeypatch.setattr(bento_build, "ROOT", tmp_path)
    monkeypatch.setattr(bento_build, "BENTOFILE", bentofile)
    built_from = bento_build.sources_hash()
    store = [
        SimpleNamespace(
            tag="shopflow:old",
            info=SimpleNamespace(
                labels={"model_version": "v1", "sources": built_from}, creation_time=1
            ),
        )
    ]
    bentoml = pytest.importorskip("bentoml")
    monkeypatch.setattr(bentoml, "list", lambda: store)
    assert bento_build.find_bento("shopflow:v1") == "shopflow:old"
    assert bento_build.find_bento("shopflow:v2") is None  # another model
    (tmp_path / "bento" / "service.py").write_text("answer = 2\n")  # a shopflow upgrade
    assert bento_build.sources_hash() != built_from
    assert bento_build.find_bento("shopflow:v1") is None  # rebuilt, not reused
    (tmp_path / "bento" / "service.py").write_text("answer = 1\n")
    (tmp_path / "bento" / "requirements.txt").write_text("numpy==2.1\n")  # new pins
    assert bento_build.find_bento("shopflow:v1") is None

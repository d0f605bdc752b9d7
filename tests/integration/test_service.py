"""The real BentoML service on loopback: every endpoint, every kind of bad input, and search
quality on the synthetic shop measured with the simulator's true relevance.

One model is trained for the module: the synthetic shop on the tiny profile, the packaged
MiniLM encoder (no pretrain-adapt), a few fine-tuning steps. It is saved to a throwaway
BentoML home, built into a Bento (`bentoml build`, offline) and that Bento is served by
`bentoml serve` on 127.0.0.1, stopped by its pid at the end.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest

from shopflow.core import paths
from shopflow.data.synthetic.user_model import UserModel
from shopflow.data.synthetic.world import ShopWorld
from shopflow.models.lexical import BM25, Bm25Settings
from shopflow.serving.local import RunningService, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(shop):
    """The built Bento served on a free loopback port; yields its base URL; stopped by pid."""
    with RunningService(
        shop["bento"],
        free_port(),
        shop["env"],
        cwd=shop["work"],
        log_path=shop["work"] / "serve.log",
    ) as base:
        yield base


def post(base: str, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(f"{base}{path}", content=content, headers=headers, timeout=30, **kwargs)


def products(shop) -> pd.DataFrame:
    return pd.read_parquet(shop["work"] / "data/prepared/products.parquet")


def test_health_ready_version_and_metrics(service, shop):
    assert httpx.get(f"{service}/healthz").status_code == 200
    assert httpx.get(f"{service}/readyz").status_code == 200
    version = httpx.get(f"{service}/version").json()
    assert version["model"] == shop["tag"]
    assert version["model_version"] == shop["tag"].split(":")[1]
    assert version["git_revision"] and version["data_hash"] and version["reranker"] is True
    post(service, "/search", {"query": "sofa"}).raise_for_status()
    metrics = httpx.get(f"{service}/metrics").text
    assert 'bentoml_service_request_duration_seconds_count{endpoint="/search"' in metrics
    assert 'shopflow_stage_seconds_count{endpoint="search",stage="rerank"}' in metrics


def test_search_answers_with_ranked_products_and_respects_filters(service, shop):
    answer = post(service, "/search", {"query": "grey sofa", "k": 5}).json()
    hits = answer["products"]
    assert len(hits) == 5 and answer["model_version"] == shop["tag"].split(":")[1]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    catalogue = products(shop).set_index("product_id")
    top = catalogue.loc[hits[0]["product_id"], "category"].split(" > ")[0]
    price_cap = float(catalogue["price"].median())
    body = {
        "query": "grey sofa",
        "k": 20,
        "filters": {"category": top, "price": {"max": price_cap}},
    }
    filtered = post(service, "/search", body).json()["products"]
    assert filtered
    for hit in filtered:
        row = catalogue.loc[hit["product_id"]]
        assert row["category"].startswith(top) and row["price"] <= price_cap


def test_rank_reorders_exactly_the_given_products(service, shop):
    ids = products(shop)["product_id"].tolist()[:7]
    hits = post(service, "/rank", {"query": "lamp", "product_ids": ids}).json()["products"]
    assert sorted(h["product_id"] for h in hits) == sorted(ids)


def test_recommend_by_user_and_by_recent_products_keeps_the_shops_exclusion_rule(service, shop):
    rule = httpx.get(f"{service}/version").json()["recommends"]
    policy = json.loads((shop["work"] / "data/prepared/recommend.json").read_text())
    assert rule["exclude"] == policy["exclude"]  # what prepare resolved is what is served
    users = pd.read_parquet(shop["work"] / "data/prepared/users.parquet")
    buyer = users[users["purchased"].map(len) > 0].iloc[0]
    hits = post(service, "/recommend", {"user_key": buyer["user_key"], "k": 10}).json()["products"]
    returned = {h["product_id"] for h in hits}
    assert len(hits) == 10
    if rule["exclude"] in ("purchased", "interacted"):
        assert not returned & set(buyer["purchased"])
    if rule["exclude"] == "interacted":
        assert not returned & set(buyer["recent"])
    recent = list(buyer["recent"][-2:])
    by_items = post(service, "/recommend", {"recent_product_ids": recent, "k": 5}).json()
    assert len(by_items["products"]) == 5


BAD_INPUT = [
    ("/search", {"query": "   "}, 400, "query"),
    ("/search", {"query": ""}, 400, "query"),
    ("/search", {"query": "x" * 513}, 400, "at most 512"),
    ("/search", {"query": "sofa", "k": 0}, 400, "greater than or equal to 1"),
    ("/search", {"query": "sofa", "k": 101}, 400, "less than or equal to 100"),
    ("/search", {"query": "sofa", "k": "5"}, 400, "valid integer"),
    ("/search", {"query": 42}, 400, "valid string"),
    ("/search", {"k": 5}, 400, "Field required"),
    ("/search", {"query": "sofa", "colour": "red"}, 400, "Extra inputs"),
    ("/search", {"query": "sofa", "filters": {"price": {"min": 50, "max": 10}}}, 400, "above max"),
    ("/rank", {"query": "sofa", "product_ids": []}, 400, "at least 1"),
    ("/rank", {"query": "sofa", "product_ids": ["no-such-product"]}, 400, "no-such-product"),
    ("/recommend", {"k": 5}, 400, "user_key or recent_product_ids"),
    ("/recommend", {"recent_product_ids": ["ghost-1"]}, 400, "ghost-1"),
    ("/recommend", {"user_key": "stranger"}, 400, "no history"),
    ("/search", b"not json", 400, "not JSON"),
    ("/search", b"[1, 2]", 400, "JSON object"),
    ("/search", b"", 400, "empty"),
    ("/search", b'{"query": "\xff\xfe"}', 400, "not UTF-8"),
    ("/search", json.dumps({"query": "a" * 70_000}).encode(), 413, "over the limit"),
]


@pytest.mark.parametrize(("path", "body", "status", "says"), BAD_INPUT)
def test_bad_input_gets_a_clear_4xx(service, path, body, status, says):
    response = post(service, path, body)
    assert response.status_code == status, response.text
    assert says in response.text


def test_non_json_media_type_is_415(service):
    response = httpx.post(
        f"{service}/search",
        content=b"query=sofa",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415 and "JSON" in response.text


def test_search_returns_more_relevant_products_than_bm25(service, shop):
    """True relevance (the simulator's grades) of the served top 10 beats the tuned BM25F's
    top 10 (the baselines stage's settings) on fresh queries sampled from the shop's users."""
    params = shop["params"]
    world = ShopWorld(params.synthetic, params.seed)
    requests = UserModel(world).sample_requests(params.ingest.window.end, 60, seed=7)
    catalogue = products(shop)
    bm25 = BM25.of_products(catalogue, Bm25Settings.load(shop["work"] / paths.BM25_SETTINGS))
    bm25_top = [[pid for pid, _ in hits] for hits in bm25.search(requests.text, k=10)]
    served_top = [
        [
            h["product_id"]
            for h in post(service, "/search", {"query": q, "k": 10}).json()["products"]
        ]
        for q in requests.text
    ]
    model = UserModel(world)
    served = float(np.mean(model.grades(requests, served_top)))
    lexical = float(np.mean(model.grades(requests, bm25_top)))
    assert served > lexical, (served, lexical)

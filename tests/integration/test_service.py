"""The real BentoML service on loopback: every endpoint, every kind of bad input, and search
quality on the synthetic shop measured with the simulator's true relevance.

One model is trained for the module: the synthetic shop on the tiny profile, the packaged
MiniLM encoder (no pretrain-adapt), a few fine-tuning steps. It is saved to a throwaway
BentoML home, built into a Bento (`bentoml build`, offline) and that Bento is served by
`bentoml serve` on 127.0.0.1, stopped by its pid at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest

from shopflow.core import paths
from shopflow.core.processes import stop_process_tree
from shopflow.core.secrets import new_key
from shopflow.data.synthetic.user_model import UserModel
from shopflow.data.synthetic.world import ShopWorld
from shopflow.models.lexical import BM25, Bm25Settings
from shopflow.serving.http import API_KEY_ENV
from shopflow.serving.local import RunningService, free_port, is_ready
from tests.conftest import ROOT
from tools.bench.hostile import check, slow_body, slow_headers
from tools.bench.hostile_probes import probes

pytestmark = pytest.mark.integration
API_KEY = new_key()


@pytest.fixture(scope="module")
def service(shop):
    """The built Bento served on a free loopback port; yields its base URL; stopped by pid."""
    with RunningService(
        shop["bento"],
        free_port(),
        {**shop["env"], API_KEY_ENV: API_KEY},
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


def buyer(shop) -> pd.Series:
    users = pd.read_parquet(shop["work"] / "data/prepared/users.parquet")
    return users[users["purchased"].map(len) > 0].iloc[0]


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
    customer = buyer(shop)
    with_key = {"headers": {"Authorization": f"Bearer {API_KEY}"}}
    refused = post(service, "/recommend", {"user_key": customer["user_key"], "k": 10})
    assert refused.status_code == 401  # a customer's recommendations need the API key
    hits = post(
        service, "/recommend", {"user_key": customer["user_key"], "k": 10}, **with_key
    ).json()["products"]
    returned = {h["product_id"] for h in hits}
    assert len(hits) == 10
    if rule["exclude"] in ("purchased", "interacted"):
        assert not returned & set(customer["purchased"])
    if rule["exclude"] == "interacted":
        assert not returned & set(customer["recent"])
    recent = list(customer["recent"][-2:])
    by_items = post(service, "/recommend", {"recent_product_ids": recent, "k": 5}).json()
    assert len(by_items["products"]) == 5


def test_the_hostile_input_suite_gets_no_5xx_and_every_4xx_names_the_problem(service, shop):
    """110 probes (malformed, nested, encodings, sizes, types at every level, methods, paths,
    headers, API keys): each gets its expected status and a body that names the problem."""
    ids = products(shop)["product_id"].tolist()
    suite = probes(shop["params"].serving, ids, buyer(shop)["user_key"], API_KEY)
    assert len(suite) >= 100
    results = check(service, suite)
    failed = [r for r in results if not r["passed"]]
    assert not failed, json.dumps(failed, indent=1)
    assert max(r["ms"] for r in results) < 30_000  # nothing hung


def test_a_body_or_headers_that_stop_half_way_do_not_hold_the_service(service, shop):
    seconds = shop["params"].serving.read_timeout_s
    body = slow_body(service, seconds)
    assert body["passed"] and "did not arrive within" in body["answer"], body
    headers = slow_headers(service, seconds)
    assert headers["passed"], headers
    post(service, "/search", {"query": "sofa"}).raise_for_status()  # still answering


def test_client_errors_are_one_warning_line_each_not_error_tracebacks(service, shop):
    post(service, "/search", {"query": "sofa", "k": "five"})
    post(service, "/rank", {"query": "sofa", "product_ids": ["no-such-product"]})
    log = (shop["work"] / "serve.log").read_text()
    assert "Traceback" not in log and "Exception on" not in log
    assert "400 POST /rank: " in log and "no-such-product" in log


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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_shopflow_serve_stops_the_server_and_frees_the_port(shop, sig):
    """`shopflow serve` starts BentoML's arbiter and workers; a SIGTERM to it (Ctrl-C, a
    process manager, `kill`) stops them all, and even a SIGKILL takes them down with it."""
    port = free_port()
    command = [sys.executable, "-m", "shopflow", "--params", str(ROOT / "params.yaml"), "serve"]
    command += ["--bento", shop["bento"], "--port"]
    parent = subprocess.Popen(
        [*command, str(port)],
        cwd=shop["work"],
        env=shop["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not is_ready(f"http://127.0.0.1:{port}"):
            assert parent.poll() is None and time.monotonic() < deadline, "never ready"
            time.sleep(0.5)
        tree = psutil.Process(parent.pid).children(recursive=True)
        assert len(tree) >= 2  # the arbiter and at least one worker
        os.kill(parent.pid, sig)
        parent.wait(timeout=60)
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        with socket.socket() as probe:  # nothing listens on the port any more
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if parent.poll() is None:
            stop_process_tree(parent.pid)

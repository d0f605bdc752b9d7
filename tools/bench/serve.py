"""`make bench-serve`: the real service under a bounded load, against the raw reranker.

For adaptive batching on and off, the service is started on 127.0.0.1 (`bentoml serve`, the
current model) and driven by an async client (httpx) at each concurrency for a fixed time:
`concurrency` workers each send a request, wait for the answer and send the next, so the
load is closed-loop and bounded. /search bodies are the test split's queries; /rank bodies
are a query with `rank_products` catalogue products.

In the same run, in-process on the same model: the whole /search path (`SearchEngine.search`,
one query a call: the raw figure of what the endpoint serves) and, when the model serves a
reranker, the reranker alone at the batch a /search request scores (`candidates` pairs). The
ratios service ÷ raw are what the HTTP layer, JSON and the batcher cost. The load generator
runs on the same machine as the service, so on a small CPU it competes with it: the ratios
are a floor.

Last, every judged test query is sent once to the service's /search: its NDCG@10 must equal
the bundle's in-process NDCG@10 and the A/B evaluation's for the same model (what is served
is what was measured).
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from shopflow.core import paths
from shopflow.core.config import Params
from shopflow.engine.bundle import load_engine
from shopflow.engine.search import SearchEngine
from shopflow.evaluation.offline import test_qrels
from shopflow.serving.bento_build import ROOT
from shopflow.serving.local import SERVICE, RunningService, free_port
from shopflow.serving.model_store import current_model

log = logging.getLogger(__name__)

RESULT = paths.metrics("bench_serve")


async def drive(base: str, path: str, bodies: list[dict], concurrency: int, seconds: float) -> dict:
    """Closed-loop load: `concurrency` workers for `seconds`; requests/s and latency ms."""
    import httpx

    latencies: list[float] = []
    errors: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = await client.post(path, json=bodies[i % len(bodies)])
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return {
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_statuses": {str(k): v for k, v in sorted(errors.items())},
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def raw_reranker(engine: SearchEngine, queries: list[str], batch: int, seconds: float) -> float:
    """Pairs per second of the reranker in-process: retrieve once, then score `batch` pairs
    per call as a /search request does, for `seconds`."""
    vectors = engine.embed_queries(queries)
    found = engine.retrieve(vectors, batch)
    calls = [
        ([q] * len(c), [p for p, _ in c], [s for _, s in c])
        for q, c in zip(queries, found, strict=True)
    ]
    engine.score_pairs(*calls[0])  # warm-up: tokenises and caches the products
    pairs, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        pairs += len(engine.score_pairs(*calls[i % len(calls)]))
        i += 1
    return pairs / (time.perf_counter() - started)


def raw_search(engine: SearchEngine, queries: list[str], seconds: float) -> dict:
    """The /search path in-process, one query a call for `seconds`: requests/s and latency."""
    engine.search([queries[0]], k=10)  # warm-up
    latencies, started, i = [], time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        began = time.perf_counter()
        engine.search([queries[i % len(queries)]], k=10)
        latencies.append(time.perf_counter() - began)
        i += 1
    ms = np.asarray(latencies) * 1000
    return {
        "requests_per_s": round(len(latencies) / (time.perf_counter() - started), 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "reranker": engine.reranker is not None,
    }


def served_quality(
    base: str, engine: SearchEngine, qrels: dict[str, dict[str, float]], params: Params
) -> dict | None:
    """NDCG@10 of the judged test queries through the service, in-process on the same bundle,
    and as the A/B evaluation measured it (None without judged test queries)."""
    import httpx

    from shopflow.evaluation import ranking

    if not qrels:
        return None
    queries = list(qrels)
    with httpx.Client(base_url=base, timeout=60) as client:
        served = {
            q: [
                hit["product_id"]
                for hit in client.post("/search", json={"query": q, "k": 10}).json()["products"]
            ]
            for q in queries
        }
    in_process = {
        q: [h.product_id for h in row]
        for q, row in zip(queries, engine.search(queries, k=10), strict=True)
    }
    relevant_at = params.evaluation.relevant_at
    service_ndcg = ranking.per_query(qrels, served, relevant_at).set_index("query")["ndcg@10"]
    bundle_ndcg = ranking.per_query(qrels, in_process, relevant_at).set_index("query")["ndcg@10"]
    result = {
        "queries": len(queries),
        "service_ndcg@10": round(float(service_ndcg.mean()), 4),
        "in_process_ndcg@10": round(float(bundle_ndcg.mean()), 4),
        "max_query_difference": round(float((service_ndcg - bundle_ndcg).abs().max()), 6),
    }
    evaluated = paths.EVALUATION / "challenger_search.parquet"
    if evaluated.exists():
        result["evaluate_ndcg@10"] = round(
            float(pd.read_parquet(evaluated).set_index("query")["ndcg@10"].reindex(queries).mean()),
            4,
        )
    return result


def serve_throughput(
    params: Params,
    concurrencies: tuple[int, ...] = (1, 8, 32),
    seconds: float = 20.0,
    rank_products: int = 20,
) -> dict:
    """The table of `make bench-serve` (also written to metrics/bench_serve.json)."""
    import bentoml

    tag = current_model(params)
    model_path = Path(bentoml.models.get(tag).path)
    catalogue = pd.read_parquet(model_path / "catalogue.parquet")
    judged = paths.PREPARED / "judgments.parquet"
    qrels = test_qrels({"judgments": pd.read_parquet(judged)}) if judged.exists() else {}
    queries = (
        sorted(qrels) if qrels else catalogue["title"].str.split().str[:2].str.join(" ").tolist()
    )[:500]
    rng = np.random.default_rng(params.seed)
    ids = catalogue["product_id"].to_numpy()
    picks = [rng.choice(ids, rank_products, replace=False).tolist() for _ in queries]
    bodies = {
        "/search": [{"query": q, "k": 10} for q in queries],
        "/rank": [{"query": q, "product_ids": p} for q, p in zip(queries, picks, strict=True)],
    }
    engine = load_engine(model_path)
    raw_path = raw_search(engine, queries, seconds)
    log.info("raw /search path in-process: %s", raw_path)
    candidates = params.reranker.candidates if raw_path["reranker"] else 0
    raw = raw_reranker(engine, queries[:64], candidates, seconds) if candidates else None
    if raw is not None:
        log.info("raw reranker in-process: %.0f pairs/s at %d pairs a call", raw, candidates)
    quality = None
    rows = []
    for batching in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            tree = yaml.safe_load((ROOT / paths.PARAMS).read_text())
            tree.setdefault("serving", {})["adaptive_batching"] = batching
            params_file = Path(tmp) / paths.PARAMS.name
            params_file.write_text(yaml.safe_dump(tree))
            env = {"SHOPFLOW_MODEL": tag, "SHOPFLOW_PARAMS": str(params_file)}
            with RunningService(SERVICE, free_port(), env) as base:
                if quality is None:
                    quality = served_quality(base, engine, qrels, params)
                    log.info("served quality: %s", quality)
                for path, pairs_per_request in (("/search", candidates), ("/rank", rank_products)):
                    asyncio.run(drive(base, path, bodies[path], 4, 3.0))  # warm-up
                    for concurrency in concurrencies:
                        row = asyncio.run(drive(base, path, bodies[path], concurrency, seconds))
                        pairs_per_s = row["requests_per_s"] * pairs_per_request
                        row.update(
                            endpoint=path,
                            concurrency=concurrency,
                            adaptive_batching=batching,
                            pairs_per_s=round(pairs_per_s, 1),
                            service_over_raw=round(pairs_per_s / raw, 3) if raw else None,
                        )
                        if path == "/search":
                            row["search_over_raw"] = round(
                                row["requests_per_s"] / raw_path["requests_per_s"], 3
                            )
                        rows.append(row)
                        log.info("bench serve: %s", row)
            if not raw_path["reranker"]:
                break  # without a reranker there is nothing to batch: one pass is the table
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "model": tag,
        "seconds_per_cell": seconds,
        "candidates": candidates,
        "rank_products": rank_products,
        "raw_search": raw_path,
        "raw_reranker_pairs_per_s": round(raw, 1) if raw else None,
        "served_quality": quality,
        "max_batch_size": params.serving.max_batch_size,
        "max_latency_ms": params.serving.max_latency_ms,
        "rows": rows,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nraw /search in-process: {raw_path['requests_per_s']:,.1f} req/s, p50 "
        f"{raw_path['p50_ms']:.1f} ms, p95 {raw_path['p95_ms']:.1f} ms, p99 "
        f"{raw_path['p99_ms']:.1f} ms (reranker {'on' if raw_path['reranker'] else 'off'})"
    )
    if raw:
        print(f"raw reranker in-process: {raw:,.0f} pairs/s ({candidates} pairs a call)")
    if quality:
        print(
            f"NDCG@10 of {quality['queries']} test queries: service {quality['service_ndcg@10']}, "
            f"in-process {quality['in_process_ndcg@10']}, evaluate "
            f"{quality.get('evaluate_ndcg@10', 'n/a')}"
        )
    print(
        f"{'endpoint':<10}{'batching':<10}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'pairs/s':>10}{'÷ raw':>8}{'errors':>8}"
    )
    for r in rows:
        ratio = r.get("search_over_raw") or r["service_over_raw"]
        print(
            f"{r['endpoint']:<10}{'on' if r['adaptive_batching'] else 'off':<10}"
            f"{r['concurrency']:>5}{r['requests_per_s']:>9.1f}{r['p50_ms']:>9.1f}"
            f"{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['pairs_per_s']:>10,.0f}"
            f"{ratio if ratio is not None else float('nan'):>8.2f}{r['errors']:>8}"
        )
    print(f"  written to {RESULT}")
    return result

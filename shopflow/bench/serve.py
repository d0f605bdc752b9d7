"""`make bench-serve`: the real service under a bounded load, against the raw reranker.

For adaptive batching on and off, the service is started on 127.0.0.1 (`bentoml serve`, the
current model) and driven by an async client (httpx) at each concurrency for a fixed time:
`concurrency` workers each send a request, wait for the answer and send the next, so the
load is closed-loop and bounded. /search bodies are the test split's queries; /rank bodies
are a query with `rank_products` catalogue products.

In the same run the reranker is timed in-process on the same model at the batch a /search
request scores (`candidates` pairs): the ratio service ÷ raw (reranked pairs per second) is
what the HTTP layer, JSON, retrieval and the batcher cost. The load generator runs on the
same machine as the service, so on a small CPU it competes with it: the ratio is a floor.
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


def raw_reranker(model_path: Path, queries: list[str], batch: int, seconds: float) -> float:
    """Pairs per second of the reranker in-process: retrieve once, then score `batch` pairs
    per call as a /search request does, for `seconds`."""
    from shopflow.engine.bundle import load_engine

    engine = load_engine(model_path)
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
    queries = (
        sorted(pd.read_parquet(judged).query("split == 'test'")["query"].unique())
        if judged.exists()
        else catalogue["title"].str.split().str[:2].str.join(" ").tolist()
    )[:500]
    rng = np.random.default_rng(params.seed)
    ids = catalogue["product_id"].to_numpy()
    picks = [rng.choice(ids, rank_products, replace=False).tolist() for _ in queries]
    bodies = {
        "/search": [{"query": q, "k": 10} for q in queries],
        "/rank": [{"query": q, "product_ids": p} for q, p in zip(queries, picks, strict=True)],
    }
    candidates = params.reranker.candidates
    raw = raw_reranker(model_path, queries[:64], candidates, seconds)
    log.info("raw reranker in-process: %.0f pairs/s at %d pairs a call", raw, candidates)
    rows = []
    for batching in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            tree = yaml.safe_load((ROOT / paths.PARAMS).read_text())
            tree.setdefault("serving", {})["adaptive_batching"] = batching
            params_file = Path(tmp) / paths.PARAMS.name
            params_file.write_text(yaml.safe_dump(tree))
            env = {"SHOPFLOW_MODEL": tag, "SHOPFLOW_PARAMS": str(params_file)}
            with RunningService(SERVICE, free_port(), env) as base:
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
                            service_over_raw=round(pairs_per_s / raw, 3),
                        )
                        rows.append(row)
                        log.info("bench serve: %s", row)
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "model": tag,
        "seconds_per_cell": seconds,
        "candidates": candidates,
        "rank_products": rank_products,
        "raw_reranker_pairs_per_s": round(raw, 1),
        "max_batch_size": params.serving.max_batch_size,
        "max_latency_ms": params.serving.max_latency_ms,
        "rows": rows,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nraw reranker in-process: {raw:,.0f} pairs/s ({candidates} pairs a call)")
    print(
        f"{'endpoint':<10}{'batching':<10}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'pairs/s':>10}{'÷ raw':>8}{'errors':>8}"
    )
    for r in rows:
        print(
            f"{r['endpoint']:<10}{'on' if r['adaptive_batching'] else 'off':<10}"
            f"{r['concurrency']:>5}{r['requests_per_s']:>9.1f}{r['p50_ms']:>9.1f}"
            f"{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['pairs_per_s']:>10,.0f}"
            f"{r['service_over_raw']:>8.2f}{r['errors']:>8}"
        )
    print(f"  written to {RESULT}")
    return result

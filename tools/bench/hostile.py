"""`make bench-hostile`: the running service against hostile input and a mixed load.

The probes of `hostile_probes` (what a shop's security reviewer would send), each checked for
its status and for a body that names the problem; and, over raw sockets, a body and a header
block that stop half-way.

Then a closed-loop load (`load`, 64 clients for 60 s by default) mixing valid requests with
the invalid ones: it counts statuses, 5xx and hangs (no answer within `hang_s`).
The test suite runs the probes against the real Bento (`tests/integration/test_service.py`);
this benchmark adds the load and writes `metrics/bench_hostile.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlparse

from shopflow.core import paths
from shopflow.core.config import Params
from tools.bench.hostile_probes import Probe, probes

log = logging.getLogger(__name__)

RESULT = paths.metrics("bench_hostile")


def send(base: str, probe: Probe, timeout_s: float = 30.0) -> tuple[int, str]:
    """The status and body the service answers `probe` with (599: no answer in time)."""
    import httpx

    if "Content-Length" in probe.headers:  # a length that lies: HTTP clients refuse to send it
        return send_raw(base, probe, timeout_s)
    try:
        response = httpx.request(
            probe.method,
            f"{base}{probe.path}",
            content=probe.body or None,
            headers=probe.headers,
            timeout=timeout_s,
        )
    except httpx.TimeoutException:
        return 599, f"no answer within {timeout_s:g} s"
    return response.status_code, response.text


def send_raw(base: str, probe: Probe, timeout_s: float) -> tuple[int, str]:
    """`probe` written byte for byte on a socket, headers exactly as given."""
    head = f"{probe.method} {probe.path} HTTP/1.1\r\nHost: {urlparse(base).netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in probe.headers.items()) + "\r\n"
    with _connect(base) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(head.encode("latin-1") + probe.body)
        answer = read_answer(sock)
    if answer is None:
        return 599, f"no answer within {timeout_s:g} s"
    status = status_of(answer)
    return status, answer.split("\r\n\r\n", 1)[-1]


def status_of(answer: str) -> int:
    """The status code of a raw HTTP response (0 when it is not one)."""
    return int(answer.split()[1]) if answer.startswith("HTTP/") else 0


def read_answer(sock: socket.socket) -> str | None:
    """One HTTP response read off `sock`: headers, then Content-Length bytes of body (or up
    to the close or the socket's timeout); None when nothing came at all."""
    data = b""
    with contextlib.suppress(TimeoutError):
        while True:
            head, found, body = data.partition(b"\r\n\r\n")
            if found:
                lengths = [
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if not lengths or len(body) >= lengths[0]:
                    break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode("latin-1") if data else None


def check(base: str, suite: list[Probe]) -> list[dict]:
    """Each probe's outcome: status, whether it is the expected one and names the problem."""
    results = []
    for probe in suite:
        started = time.perf_counter()
        status, text = send(base, probe)
        passed = status == probe.status and probe.says in text and status < 500
        results.append(
            {
                "name": probe.name,
                "kind": probe.kind,
                "status": status,
                "expected": probe.status,
                "passed": passed,
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "answer": text[:200],
            }
        )
    return results


def _connect(base: str) -> socket.socket:
    url = urlparse(base)
    return socket.create_connection((url.hostname, url.port), timeout=60)


def slow_body(base: str, timeout_s: float) -> dict:
    """Headers that promise 100 bytes, then 10: the answer must be 408 within the deadline."""
    started = time.perf_counter()
    with _connect(base) as sock:
        sock.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"query": '
        )
        answer = read_answer(sock) or ""
    seconds = time.perf_counter() - started
    status = status_of(answer)
    return {
        "status": status,
        "seconds": round(seconds, 1),
        "answer": answer[-200:],
        "passed": status == 408 and seconds < timeout_s + 5,
    }


def slow_headers(base: str, timeout_s: float) -> dict:
    """A header block that never ends: the connection must be closed within the deadline."""
    started = time.perf_counter()
    with _connect(base) as sock:
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\n")
        closed = False
        try:
            for _ in range(int(timeout_s) + 10):  # a header line a second, slowloris style
                time.sleep(1)
                sock.sendall(b"X-Slow: 1\r\n")
        except OSError:
            closed = True
        if not closed:
            closed = sock.recv(4096) == b""
    seconds = time.perf_counter() - started
    return {
        "closed": closed,
        "seconds": round(seconds, 1),
        "passed": closed and seconds < timeout_s + 5,
    }


async def load(
    base: str, mix: list[Probe], clients: int = 64, seconds: float = 60.0, hang_s: float = 30.0
) -> dict:
    """`clients` closed-loop clients sending the `mix` in turn for `seconds`: statuses, 5xx,
    hangs (no answer within `hang_s`) and latency of each."""
    import httpx
    import numpy as np

    statuses: dict[int, int] = {}
    latencies: list[float] = []
    hangs = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=hang_s, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal hangs
            i = offset
            while time.perf_counter() < stop:
                probe = mix[i % len(mix)]
                started = time.perf_counter()
                try:
                    response = await client.request(
                        probe.method,
                        probe.path,
                        content=probe.body or None,
                        headers=probe.headers,
                    )
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    latencies.append(time.perf_counter() - started)
                except httpx.TimeoutException:
                    hangs += 1
                i += clients

        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - began
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    total = sum(statuses.values())
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "hangs": hangs,
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def hostile_bench(params: Params, clients: int = 64, seconds: float = 60.0) -> dict:
    """`make bench-hostile`: the current model's service (with a fresh API key) against the
    probes, the two slow-request probes, then the mixed load; written to RESULT."""
    import bentoml
    import pandas as pd

    from shopflow.core.secrets import new_key
    from shopflow.serving.http import API_KEY_ENV
    from shopflow.serving.local import SERVICE, RunningService, free_port
    from shopflow.serving.model_store import current_model

    tag = current_model(params)
    folder = Path(bentoml.models.get(tag).path)
    ids = pd.read_parquet(folder / "catalogue.parquet")["product_id"].astype(str).tolist()
    users = folder / "recommender" / "user_items.parquet"
    user = str(pd.read_parquet(users)["user_key"].iloc[0]) if users.exists() else "nobody"
    api_key = new_key()
    suite = probes(params.serving, ids, user, api_key)
    env = {"SHOPFLOW_MODEL": tag, API_KEY_ENV: api_key}
    with RunningService(SERVICE, free_port(), env) as base:
        results = check(base, suite)
        body = slow_body(base, params.serving.read_timeout_s)
        headers = slow_headers(base, params.serving.read_timeout_s)
        valid = [p for p in suite if p.status == 200]
        invalid = [p for p in suite if p.status != 200 and p.kind != "size"]
        turns = max(len(valid), len(invalid))  # every probe in turn, valid and invalid alternating
        mix = [p for i in range(turns) for p in (valid[i % len(valid)], invalid[i % len(invalid)])]
        loaded = asyncio.run(load(base, mix, clients, seconds))
    failed = [r for r in results if not r["passed"]]
    result = {
        "model": tag,
        "probes": len(results),
        "passed": len(results) - len(failed),
        "failed": failed,
        "by_kind": {
            kind: sum(1 for r in results if r["kind"] == kind)
            for kind in sorted({r["kind"] for r in results})
        },
        "slow_body": body,
        "slow_headers": headers,
        "load": loaded,
        "suite": [asdict(p) | {"body": p.body[:120].decode("latin-1")} for p in suite],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"hostile probes: {result['passed']}/{result['probes']} answered as expected")
    for r in failed:
        print(f"  FAILED {r['name']}: {r['status']} (expected {r['expected']}): {r['answer']}")
    print(
        f"slow body: {body['status']} after {body['seconds']} s; slow headers: closed "
        f"{headers['closed']} after {headers['seconds']} s"
    )
    print(
        f"load, {clients} clients for {loaded['seconds']} s: {loaded['requests']} requests "
        f"({loaded['requests_per_s']}/s), statuses {loaded['statuses']}, 5xx "
        f"{loaded['server_errors']}, hangs {loaded['hangs']}, p50 {loaded['p50_ms']} ms, "
        f"p99 {loaded['p99_ms']} ms"
    )
    print(f"  written to {RESULT}")
    return result

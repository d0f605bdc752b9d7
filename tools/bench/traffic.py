"""A live-traffic simulator that drives the real service over HTTP.

The synthetic shop's shoppers (`UserModel`) send their searches to /search with a session id
(one per simulated customer, so assignment is sticky), click what they are shown under the
shop's own click model, add some clicked products to the cart, and POST those events back
naming the impression and position. Every hop is counted, so a test can check that the
service's logs hold exactly what was sent: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field

import httpx
import numpy as np

from shopflow.data.synthetic.user_model import UserModel

log = logging.getLogger(__name__)


@dataclass
class TrafficCounts:
    searches: int = 0
    impressions: list[str] = field(default_factory=list)
    events_sent: int = 0
    events_accepted: int = 0
    duplicates: int = 0
    errors: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**self.__dict__, "impressions": len(self.impressions)}


def simulate_traffic(
    base: str,
    users: UserModel,
    day: dt.date,
    searches: int,
    *,
    seed: int = 0,
    headers: dict[str, str] | None = None,
    retry_every: int = 0,
    log_every: int = 200,
) -> TrafficCounts:
    """Send `searches` shoppers' searches and their events; with `retry_every` > 0 every
    that-many-th event batch is sent twice (a client retry) to prove idempotency."""
    rng = np.random.default_rng(seed)
    requests = users.sample_requests(day, searches, seed)
    counts = TrafficCounts()
    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=60, headers=headers or {}) as client:
        for i in range(searches):
            session = f"sim-{int(requests.user[i])}"
            answer = client.post(
                "/search", json={"query": requests.text[i], "session_id": session, "k": 10}
            )
            counts.searches += 1
            if answer.status_code != 200:
                counts.errors[answer.status_code] = counts.errors.get(answer.status_code, 0) + 1
                continue
            body = answer.json()
            shown = [p["product_id"] for p in body["products"]]
            counts.impressions.append(body["impression_id"])
            one = requests.take(np.array([i]))
            grades = users.grades(one, [shown])[0]
            clicks = users.clicks(one, [shown], day, rng)[0]
            events = []
            for pos in np.flatnonzero(clicks):
                base_event = {
                    "impression_id": body["impression_id"],
                    "product_id": shown[pos],
                    "position": int(pos) + 1,
                }
                events.append({"event_id": uuid.uuid4().hex, "type": "click", **base_event})
                if rng.random() < 0.12 + 0.3 * grades[pos] / 3:
                    events.append(
                        {"event_id": uuid.uuid4().hex, "type": "add_to_cart", **base_event}
                    )
            if not events:
                continue
            sends = 2 if retry_every and i % retry_every == 0 else 1
            for _ in range(sends):
                posted = client.post("/events", json={"events": events})
                if posted.status_code != 202:
                    counts.errors[posted.status_code] = counts.errors.get(posted.status_code, 0) + 1
                    continue
                got = posted.json()
                counts.events_accepted += got["accepted"]
                counts.duplicates += got["duplicates"]
            counts.events_sent += len(events)
            if log_every and (i + 1) % log_every == 0:
                rate = (i + 1) / (time.perf_counter() - started)
                log.info(
                    "traffic: %d/%d searches (%.0f/s, ETA %.0f s)",
                    i + 1,
                    searches,
                    rate,
                    (searches - i - 1) / rate,
                )
    return counts

"""Assemble the synthetic shop's contract tables for a window of days."""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np
import pandas as pd

from shopflow.core.config import SyntheticConfig
from shopflow.data.contract import Tables
from shopflow.data.privacy import scrub_text
from shopflow.data.synthetic import vocabulary as voc
from shopflow.data.synthetic.sessions import candidate_pools, simulate_day
from shopflow.data.synthetic.world import ShopWorld, _stream

log = logging.getLogger(__name__)

RELEVANCE_SCALE = (0.0, 3.0)
RANDOM_JUDGED_PER_QUERY = 10


def catalogue(world: ShopWorld, as_of: dt.date) -> pd.DataFrame:
    """The catalogue as the shop shows it on `as_of`: launched products at that day's prices."""
    titles, descriptions, colour_words = world.texts
    p = world.p
    keep = np.flatnonzero(world.launched(as_of))
    prices = world.prices(as_of)
    attributes = [
        {
            key: value
            for key, value in (
                ("colour", colour_words[i]),
                ("material", voc.MATERIALS[p["material"][i]] if p["material"][i] >= 0 else ""),
                ("size", voc.SIZES[p["size"][i]] if p["size"][i] >= 0 else ""),
            )
            if value
        }
        for i in keep
    ]
    return pd.DataFrame(
        {
            "product_id": world.product_ids[keep],
            "title": [titles[i] for i in keep],
            "description": [descriptions[i] or None for i in keep],
            "brand": world.brand_names[p["brand"][keep]],
            "category": [world.leaves[leaf].path for leaf in p["leaf"][keep]],
            "price": prices[keep],
            "attributes": attributes,
            "first_seen": pd.to_datetime(
                [dt.date.fromordinal(int(o)) for o in p["launch"][keep]], utc=True
            ),
        }
    )


def judge(world: ShopWorld, day: dt.date, log_of_day, n_queries: int) -> pd.DataFrame:
    """True grades of (query, product) for a sample of the day's distinct queries.

    Each judged query gets its whole candidate pool (every product of the intended leaf the
    engine could show, its complements) plus random products, so recall is measurable.
    """
    requests = log_of_day.requests
    if n_queries == 0 or not len(requests):
        return pd.DataFrame(columns=["query", "product_id", "relevance"])
    rng = _stream(world.seed, 20, day.toordinal())
    seen: set[str] = set()
    chosen = []
    for i in rng.permutation(len(requests)):
        text = requests.text[i]
        if text in seen or scrub_text(text) != text:
            continue
        seen.add(text)
        chosen.append(i)
        if len(chosen) == n_queries:
            break
    pools = candidate_pools(world, day)
    launched = np.flatnonzero(world.launched(day))
    frames = []
    for i in chosen:
        others = rng.choice(launched, min(RANDOM_JUDGED_PER_QUERY, len(launched)), replace=False)
        products = np.unique(np.concatenate([pools[requests.leaf[i]], others]))
        grades = world.relevance(
            requests.leaf[[i]],
            requests.colour[[i]],
            requests.material[[i]],
            requests.brand[[i]],
            products[None, :],
        )[0]
        frames.append(
            pd.DataFrame(
                {
                    "query": requests.text[i],
                    "product_id": world.product_ids[products],
                    "relevance": grades.astype(float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def generate(cfg: SyntheticConfig, seed: int, days: list[dt.date]) -> Tables:
    """Products (as of the last day), events and judgments of the synthetic shop for `days`."""
    started = time.perf_counter()
    world = ShopWorld(cfg, seed)
    log.info(
        "synthetic shop: %d products in %d leaves, %d users (built in %.1fs)",
        world.n,
        len(world.leaves),
        cfg.n_users,
        time.perf_counter() - started,
    )
    events, judgments = [], []
    for k, day in enumerate(days, 1):
        day_log = simulate_day(world, day)
        events.append(day_log.events)
        judgments.append(judge(world, day, day_log, cfg.judged_queries_per_day))
        if k == len(days) or k % 7 == 0:
            elapsed = time.perf_counter() - started
            eta = elapsed / k * (len(days) - k)
            log.info(
                "simulated %d/%d days (%s): %d events so far, %.1f days/s, ETA %.0fs",
                k,
                len(days),
                day,
                sum(map(len, events)),
                k / elapsed,
                eta,
            )
    products = catalogue(world, days[-1])
    judged = pd.concat(judgments, ignore_index=True).drop_duplicates(["query", "product_id"])
    return Tables(
        products=products,
        events=pd.concat(events, ignore_index=True),
        judgments=judged.reset_index(drop=True),
        relevance_scale=RELEVANCE_SCALE,
        notes={"simulator": "shopflow.data.synthetic", "seed": seed},
    )

"""One simulated day of shop traffic: intents → queries → logged rankings → clicks → orders.

Search sessions issue 1–4 queries drawn from the user's intent (a leaf of the category tree,
plus, for specific queries, attributes of a product the user has in mind). A logging policy
(a noisy, lexical engine: worse on synonyms, new words and typos) ranks a candidate pool and
shows the top 10. Clicks follow a position-based model: P(click) = P(examine | position) ×
attractiveness(true grade, brand loyalty, price sensitivity). Clicks lead to add-to-cart and
purchase. Browsing sessions show a "popular for you" carousel from the user's anchor leaves
and their complements, which is what recommendation learns from.

Every step is vectorised per leaf; only the query strings are built row by row.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shopflow.data.synthetic import vocabulary as voc
from shopflow.data.synthetic.world import ShopWorld, _stream

SLATE = 10
CAROUSEL = 8
WEEKDAY_FACTOR = np.array([1.0, 0.95, 0.95, 1.0, 1.1, 1.25, 1.2])
HOUR_WEIGHTS = np.array(
    [
        1,
        0.6,
        0.4,
        0.3,
        0.3,
        0.4,
        0.8,
        1.5,
        2.2,
        2.6,
        2.8,
        3.0,
        3.2,
        3.1,
        2.9,
        2.8,
        2.9,
        3.2,
        3.8,
        4.4,
        4.8,
        4.4,
        3.2,
        1.8,
    ],
    dtype=float,
)
SPECIFICITY = np.array([0.4, 0.35, 0.25])  # broad, one attribute, brand + attribute
SYNONYM_SHARE = 0.3
TYPO_SHARE = 0.07


@dataclass
class Requests:
    """Search requests with their hidden intents (what the user model needs to click)."""

    user: np.ndarray
    leaf: np.ndarray
    colour: np.ndarray
    material: np.ndarray
    brand: np.ndarray
    lexical: np.ndarray
    text: list[str]

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> Requests:
        return Requests(
            user=self.user[rows],
            leaf=self.leaf[rows],
            colour=self.colour[rows],
            material=self.material[rows],
            brand=self.brand[rows],
            lexical=self.lexical[rows],
            text=[self.text[i] for i in rows],
        )


@dataclass
class DayLog:
    events: pd.DataFrame
    requests: Requests
    request_ts: np.ndarray


def _typo(word: str, rnd: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rnd.randrange(1, len(word) - 1)
    kind = rnd.random()
    if kind < 0.4:
        return word[:i] + word[i + 1 :]
    if kind < 0.7:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + word[i] + word[i:]


def _pii(rnd: random.Random) -> str:
    return rnd.choice(voc.PII_TEMPLATES).format(
        name=rnd.choice(voc.FIRST_NAMES),
        surname=rnd.choice(voc.SURNAMES),
        n=rnd.randint(1, 99),
        n3=f"{rnd.randint(0, 999):03d}",
    )


def sample_requests(
    world: ShopWorld, rng: np.random.Generator, users: np.ndarray, day: dt.date
) -> Requests:
    """Draw one search request per user in `users` for `day` (drift applied when active)."""
    cfg = world.cfg.drift
    n = len(users)
    drifting = world.drift_active(day)
    weights = world.u_affinity[users].copy()
    if drifting and cfg.seasonal_shift > 0:
        boost = np.array([top.name in voc.SEASONAL_TARGETS for top in voc.TAXONOMY])
        weights = weights + cfg.seasonal_shift * 3.0 * boost * weights.sum(1, keepdims=True) / 2
    top = world.sample_top(rng, weights)
    if drifting and world.with_new_category:
        top = np.where(rng.random(n) < cfg.new_category, world.n_base_tops, top)
    leaf = world.top_leaves_pick(rng, top)

    specificity = rng.choice(3, n, p=SPECIFICITY)
    # A specific query describes a launched product the user has in mind (popularity-weighted).
    pop = world.p["popularity"] * world.launched(day)
    cum = np.cumsum(pop)
    before = np.where(world.leaf_start[leaf] > 0, cum[world.leaf_start[leaf] - 1], 0.0)
    total = cum[world.leaf_end[leaf] - 1] - before if world.n else np.zeros(n)
    has_target = (world.leaf_end[leaf] > world.leaf_start[leaf]) & (total > 0)
    target = np.searchsorted(cum, before + rng.random(n) * total, side="right")
    target = np.clip(target, 0, world.n - 1)
    specificity = np.where(has_target, specificity, 0)
    colour = np.where(specificity >= 1, world.p["colour"][target], -1)
    material = np.where(specificity >= 1, world.p["material"][target], -1)
    use_material = rng.random(n) < 0.4
    colour = np.where((specificity == 1) & use_material & (material >= 0), -1, colour)
    material = np.where((specificity == 1) & ~(use_material & (material >= 0)), -1, material)
    material = np.where(specificity == 2, -1, material)
    brand = np.where(specificity == 2, world.p["brand"][target], -1)

    term_draw = rng.random(n)
    new_vocab = cfg.new_vocab if drifting else 0.0
    rnd = random.Random(int(rng.integers(0, 2**63)))
    texts: list[str] = []
    lexical = np.ones(n, dtype=bool)
    for i in range(n):
        spec = world.leaves[leaf[i]].leaf
        if term_draw[i] < new_vocab:
            noun, lexical[i] = rnd.choice(spec.new_terms), False
        elif term_draw[i] < new_vocab + SYNONYM_SHARE and spec.query_synonyms:
            noun, lexical[i] = rnd.choice(spec.query_synonyms), False
        else:
            noun = rnd.choice(spec.nouns)
        words = [noun]
        if colour[i] >= 0:
            base, variants = voc.COLOURS[colour[i]]
            words.insert(0, base if rnd.random() < 0.8 else rnd.choice(variants))
        if material[i] >= 0:
            words.insert(0, voc.MATERIALS[material[i]])
        if brand[i] >= 0:
            words.insert(0, str(world.brand_names[brand[i]]).lower())
            if rnd.random() < 0.3:
                words.append(words.pop(0))
        text = " ".join(words)
        if rnd.random() < TYPO_SHARE:
            parts = text.split()
            k = rnd.randrange(len(parts))
            parts[k] = _typo(parts[k], rnd)
            text, lexical[i] = " ".join(parts), False
        if rnd.random() < world.cfg.pii_query_rate:
            text = f"{text} {_pii(rnd)}"
        texts.append(text)
    return Requests(users, leaf, colour, material, brand, lexical, texts)


def candidate_pools(world: ShopWorld, day: dt.date) -> list[np.ndarray]:
    """Per leaf: its most popular launched products, plus those of complement leaves."""
    launched = world.launched(day)
    pop = world.p["popularity"]
    size = world.cfg.candidate_pool
    own: list[np.ndarray] = []
    for leaf in range(len(world.leaves)):
        idx = np.arange(world.leaf_start[leaf], world.leaf_end[leaf])
        idx = idx[launched[idx]]
        own.append(idx[np.argsort(-pop[idx], kind="stable")][:size])
    pools = []
    for leaf in range(len(world.leaves)):
        extra = [own[c][: max(size // 6, 5)] for c in world.complements[leaf]]
        pools.append(np.concatenate([own[leaf], *extra]).astype(np.int64))
    return pools


def rank_by_logging_policy(
    world: ShopWorld,
    requests: Requests,
    pools: list[np.ndarray],
    rng: np.random.Generator,
    depth: int = SLATE,
) -> tuple[np.ndarray, np.ndarray]:
    """The production engine's slates: (products, grades), both (requests × depth), -1 padded."""
    n = len(requests)
    slates = np.full((n, depth), -1, dtype=np.int64)
    grades = np.zeros((n, depth), dtype=np.int8)
    log_pop = np.log(world.p["popularity"])
    for leaf in np.unique(requests.leaf):
        rows = np.flatnonzero(requests.leaf == leaf)
        pool = pools[leaf]
        if not len(pool):
            continue
        cand = np.broadcast_to(pool, (len(rows), len(pool)))
        grade = world.relevance(
            requests.leaf[rows],
            requests.colour[rows],
            requests.material[rows],
            requests.brand[rows],
            cand,
        )
        sigma = np.where(requests.lexical[rows], 0.7, 1.6)[:, None]
        score = grade + sigma * rng.standard_normal(cand.shape) + 0.35 * log_pop[pool]
        k = min(depth, len(pool))
        top = np.argsort(-score, axis=1, kind="stable")[:, :k]
        slates[rows, :k] = np.take_along_axis(cand, top, axis=1)
        grades[rows, :k] = np.take_along_axis(grade, top, axis=1)
    return slates, grades


def examination(positions: np.ndarray) -> np.ndarray:
    """P(examine | position) of the position-based click model (1-based positions)."""
    return 1.0 / np.power(positions, 0.9)


def simulate_clicks(
    world: ShopWorld,
    users: np.ndarray,
    slates: np.ndarray,
    grades: np.ndarray,
    day: dt.date,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bernoulli clicks (requests × slate) under the position-based model; -1 slots never click."""
    positions = np.arange(1, slates.shape[1] + 1)[None, :]
    attract = world.attractiveness(grades, users, np.maximum(slates, 0), day)
    p_click = examination(positions) * attract * (slates >= 0)
    return rng.random(slates.shape) < p_click


def _funnel(
    world: ShopWorld,
    grades: np.ndarray,
    clicks: np.ndarray,
    slates: np.ndarray,
    day: dt.date,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    ratio = (
        world.prices(day)[np.maximum(slates, 0)]
        / world.leaf_median[world.p["leaf"][np.maximum(slates, 0)]]
    )
    p_cart = 0.12 + 0.3 * grades / 3 * np.exp(-0.5 * np.maximum(0, np.log(ratio)))
    cart = clicks & (rng.random(clicks.shape) < p_cart)
    purchase = cart & (rng.random(clicks.shape) < 0.55)
    return cart, purchase


def _events(
    world: ShopWorld,
    session: np.ndarray,
    users: np.ndarray,
    query: list[str] | None,
    ts: np.ndarray,
    slates: np.ndarray,
    clicks: np.ndarray,
    cart: np.ndarray,
    purchase: np.ndarray,
    rng: np.random.Generator,
) -> pd.DataFrame:
    rows, cols = np.nonzero(slates >= 0)
    frames = []
    delay = {
        "impression": np.zeros(len(rows)),
        "click": 2 + 2 * cols + rng.exponential(8, len(rows)),
        "add_to_cart": 30 + 2 * cols + rng.exponential(60, len(rows)),
        "purchase": 120 + 2 * cols + rng.exponential(300, len(rows)),
    }
    masks = {
        "impression": np.ones(len(rows), dtype=bool),
        "click": clicks[rows, cols],
        "add_to_cart": cart[rows, cols],
        "purchase": purchase[rows, cols],
    }
    q = np.array(query, dtype=object) if query is not None else None
    for event_type, mask in masks.items():
        r, c = rows[mask], cols[mask]
        frames.append(
            pd.DataFrame(
                {
                    "ts_s": ts[r] + delay[event_type][mask],
                    "session_id": session[r],
                    "user_id": world.user_ids[users[r]],
                    "query": q[r] if q is not None else None,
                    "product_id": world.product_ids[slates[r, c]],
                    "position": c + 1,
                    "event_type": event_type,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def simulate_day(world: ShopWorld, day: dt.date) -> DayLog:
    """All events of one day; a pure function of (world, day)."""
    cfg = world.cfg
    rng = _stream(world.seed, 10, day.toordinal())
    n = max(1, round(cfg.sessions_per_day * WEEKDAY_FACTOR[day.weekday()] * rng.normal(1, 0.03)))
    users = rng.choice(cfg.n_users, n, p=world.u_activity)
    hours = rng.choice(24, n, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()
    start = midnight + hours * 3600 + rng.uniform(0, 3000, n)
    session = np.array([f"sess-{day:%Y%m%d}-{i:06d}" for i in range(n)])
    search = rng.random(n) < cfg.search_share
    pools = candidate_pools(world, day)

    # Search sessions: 1-4 queries each, 45 s apart.
    s_idx = np.flatnonzero(search)
    k = np.minimum(rng.geometric(0.55, len(s_idx)), 4)
    q_session = np.repeat(s_idx, k)
    q_order = np.arange(len(q_session)) - np.repeat(np.cumsum(k) - k, k)
    q_ts = start[q_session] + 45.0 * q_order
    requests = sample_requests(world, rng, users[q_session], day)
    slates, grades = rank_by_logging_policy(world, requests, pools, rng)
    clicks = simulate_clicks(world, requests.user, slates, grades, day, rng)
    cart, purchase = _funnel(world, grades, clicks, slates, day, rng)
    search_events = _events(
        world,
        session[q_session],
        requests.user,
        requests.text,
        q_ts,
        slates,
        clicks,
        cart,
        purchase,
        rng,
    )

    # Browsing sessions: a carousel from an anchor leaf (70%) or one of its complements.
    b_idx = np.flatnonzero(~search)
    b_users = users[b_idx]
    leaf = world.u_anchor[b_users]
    for i in np.flatnonzero(rng.random(len(b_idx)) < 0.3):
        comps = world.complements[leaf[i]]
        if len(comps):
            leaf[i] = comps[rng.integers(len(comps))]
    carousel = np.full((len(b_idx), CAROUSEL), -1, dtype=np.int64)
    log_pop = np.log(world.p["popularity"])
    for value in np.unique(leaf):
        rows = np.flatnonzero(leaf == value)
        own = pools[value][world.p["leaf"][pools[value]] == value]
        if not len(own):
            continue
        score = log_pop[own] + 0.8 * rng.standard_normal((len(rows), len(own)))
        top = np.argsort(-score, axis=1)[:, :CAROUSEL]
        carousel[rows, : top.shape[1]] = own[top]
    b_grades = np.where(carousel >= 0, np.where(leaf == world.u_anchor[b_users], 2, 1)[:, None], 0)
    b_clicks = simulate_clicks(world, b_users, carousel, b_grades.astype(np.int8), day, rng)
    b_cart, b_purchase = _funnel(world, b_grades, b_clicks, carousel, day, rng)
    browse_events = _events(
        world,
        session[b_idx],
        b_users,
        None,
        start[b_idx],
        carousel,
        b_clicks,
        b_cart,
        b_purchase,
        rng,
    )

    events = pd.concat([search_events, browse_events], ignore_index=True)
    events["ts"] = pd.to_datetime(events.pop("ts_s"), unit="s", utc=True).dt.floor("ms")
    order = ["ts", "session_id", "user_id", "query", "product_id", "position", "event_type"]
    events = events[order].sort_values(["ts", "session_id", "position"], kind="stable")
    return DayLog(events.reset_index(drop=True), requests, q_ts)

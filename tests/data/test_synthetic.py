"""Behavioural checks of the simulated shop: is it real enough to train and test on?"""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from shopflow.core.artifacts import table_hash
from shopflow.data.synthetic import ShopWorld, UserModel, generate, simulate_day
from shopflow.data.synthetic import vocabulary as voc
from shopflow.data.synthetic.sessions import candidate_pools, rank_by_logging_policy
from tests.conftest import tiny_params

pytestmark = pytest.mark.data

DAY = dt.date(2026, 10, 20)


@pytest.fixture(scope="module")
def world() -> ShopWorld:
    params = tiny_params("synthetic.sessions_per_day=600")
    return ShopWorld(params.synthetic, params.seed)


@pytest.fixture(scope="module")
def week(world):
    return pd.concat([simulate_day(world, DAY + dt.timedelta(days=d)).events for d in range(7)])


def test_category_tree_is_rich_enough():
    assert len(voc.TAXONOMY) >= 8
    assert sum(len(top.leaves) for top in voc.TAXONOMY) >= 40


def test_generation_is_deterministic():
    params = tiny_params()
    days = [DAY, DAY + dt.timedelta(days=1)]
    first = generate(params.synthetic, params.seed, days)
    second = generate(params.synthetic, params.seed, days)
    for name in ("products", "events", "judgments"):
        assert table_hash(getattr(first, name).astype(str)) == table_hash(
            getattr(second, name).astype(str)
        )
    other = generate(params.synthetic, params.seed + 1, days)
    assert table_hash(other.events.astype(str)) != table_hash(first.events.astype(str))


def test_a_day_does_not_depend_on_the_window(world):
    alone = simulate_day(world, DAY).events
    params = tiny_params("synthetic.sessions_per_day=600")
    in_window = generate(params.synthetic, params.seed, [DAY - dt.timedelta(days=1), DAY]).events
    same_day = in_window[in_window["session_id"].str.contains(f"{DAY:%Y%m%d}")]
    assert len(same_day) == len(alone)


def test_clicks_decay_with_position_and_rise_with_relevance(world, week):
    shown = week[(week["event_type"] == "impression") & week["query"].notna()]
    clicked = week[week["event_type"] == "click"][
        ["session_id", "query", "product_id"]
    ].drop_duplicates()
    shown = shown.merge(clicked.assign(c=1), how="left", on=["session_id", "query", "product_id"])
    ctr = shown.fillna({"c": 0}).groupby("position")["c"].mean()
    assert ctr[1] > ctr[3] > ctr[10] > 0
    rng = np.random.default_rng(0)
    requests = UserModel(world).sample_requests(DAY, 2000)
    pools = candidate_pools(world, DAY)
    slates, grades = rank_by_logging_policy(world, requests, pools, rng)
    attract = world.attractiveness(grades, requests.user, np.maximum(slates, 0), DAY)
    means = [attract[grades == g].mean() for g in range(4) if (grades == g).any()]
    assert means == sorted(means)


def test_funnel_rates_are_plausible(week):
    counts = week["event_type"].value_counts()
    assert 0.03 < counts["click"] / counts["impression"] < 0.4
    assert counts["purchase"] < counts["add_to_cart"] < counts["click"]
    browse = week[week["query"].isna()]
    assert len(browse) and set(browse["event_type"]) >= {"impression", "click"}


def test_queries_use_words_no_title_contains(world, week):
    titles = " ".join(world.texts[0]).lower()
    queries = set(week["query"].dropna())
    synonyms = {s for info in world.leaves for s in info.leaf.query_synonyms if s not in titles}
    lexical_gaps = [q for q in queries if any(f" {s}" in f" {q}" for s in synonyms)]
    assert len(lexical_gaps) > 0.1 * len(queries)


def test_misspellings_and_pii_are_planted():
    params = tiny_params("synthetic.pii_query_rate=0.05")
    world = ShopWorld(params.synthetic, params.seed)
    queries = simulate_day(world, DAY).events["query"].dropna().unique()
    assert any("@" in q for q in queries)
    vocabulary = {
        w
        for info in world.leaves
        for n in info.leaf.nouns + info.leaf.query_synonyms
        for w in n.split()
    }
    assert any(all(w not in vocabulary for w in q.split()[-1:]) for q in queries)


def test_judgments_are_graded_and_cover_every_grade():
    params = tiny_params()
    tables = generate(params.synthetic, params.seed, [DAY, DAY + dt.timedelta(days=1)])
    grades = set(tables.judgments["relevance"])
    assert grades <= {0.0, 1.0, 2.0, 3.0} and {0.0, 3.0} <= grades
    assert not tables.judgments.duplicated(["query", "product_id"]).any()
    assert tables.relevance_scale == (0.0, 3.0)


def test_catalogue_has_variety():
    params = tiny_params()
    products = generate(params.synthetic, params.seed, [DAY]).products
    assert products["product_id"].is_unique
    assert products["category"].str.split(" > ").str[0].nunique() >= 8
    assert products["title"].nunique() > 0.9 * len(products)
    assert (products["price"] > 0).all()
    assert products["brand"].nunique() > 20


@pytest.mark.parametrize("knob", ["new_category", "seasonal_shift", "new_vocab", "price_change"])
def test_drift_changes_only_after_its_start(knob):
    start = DAY + dt.timedelta(days=1)
    base = tiny_params("synthetic.sessions_per_day=800")
    drifted = tiny_params(
        "synthetic.sessions_per_day=800",
        f"synthetic.drift.start={start}",
        f"synthetic.drift.{knob}=0.5",
    )
    clean, shifted = (
        ShopWorld(base.synthetic, base.seed),
        ShopWorld(drifted.synthetic, drifted.seed),
    )
    before = simulate_day(shifted, DAY).events
    pd.testing.assert_frame_equal(before, simulate_day(clean, DAY).events)
    after_clean = simulate_day(clean, start).events
    after = simulate_day(shifted, start).events
    if knob == "price_change":
        assert (shifted.prices(start) > clean.prices(start)).sum() > 0
        assert (shifted.prices(DAY) == clean.prices(DAY)).all()
    else:
        assert not after.equals(after_clean)
    if knob == "new_category":
        pets = {
            shifted.product_ids[i] for i in np.flatnonzero(shifted.p["top"] == shifted.n_base_tops)
        }
        assert after["product_id"].isin(pets).mean() > 0.1
        assert not before["product_id"].isin(pets).any()
    if knob == "new_vocab":
        new_terms = [t for info in shifted.leaves for t in info.leaf.new_terms]
        hits = after["query"].dropna().map(lambda q: any(t in q for t in new_terms))
        assert hits.mean() > 0.2


def test_user_model_prefers_relevant_rankings(world):
    model = UserModel(world)
    requests = model.sample_requests(DAY, 3000, seed=1)
    rng = np.random.default_rng(0)
    pools = candidate_pools(world, DAY)
    good = []
    bad = []
    for i in range(len(requests)):
        pool = pools[requests.leaf[i]]
        grades = model.grades(requests.take(np.array([i])), [list(world.product_ids[pool])])[0]
        order = np.argsort(-grades, kind="stable")
        good.append(list(world.product_ids[pool[order[:10]]]))
        elsewhere = np.flatnonzero(world.p["top"] != world.leaves[requests.leaf[i]].top)
        bad.append(list(world.product_ids[rng.choice(elsewhere, 10, replace=False)]))
    clicks_good = model.clicks(requests, good, DAY, rng).sum()
    clicks_bad = model.clicks(requests, bad, DAY, rng).sum()
    assert clicks_good > 5 * clicks_bad
    assert model.grades(requests.take(np.array([0])), [["unknown-id"]])[0, 0] == 0

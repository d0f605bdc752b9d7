"""The drift check on generated data: quiet on identical windows, each injected drift caught
by the right features, insufficient data said out loud, alerts on pipeline breaks, and the
cool-down. Real Evidently, the synthetic shop, the tiny encoder."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from shopflow.core.errors import StageInputError
from shopflow.data.synthetic.generate import catalogue
from shopflow.data.synthetic.sessions import simulate_day
from shopflow.data.synthetic.world import ShopWorld
from shopflow.models.bi_encoder import base_bi_encoder
from shopflow.monitoring import drift
from shopflow.monitoring import features as behaviour
from shopflow.monitoring.history import History
from shopflow.monitoring.probes import baseline_probe
from shopflow.monitoring.reference import Window, observe
from tests.conftest import tiny_params
from tools.bench.drift import synthetic_run

pytestmark = pytest.mark.data

DAY = dt.date(2026, 10, 5)


def busy_params():
    """The tiny shop with the default `min_rows` and `text_sample`, and enough sessions: the tiny
    profile's own min_rows (50) makes every feature measurable in CI, and noisy."""
    return tiny_params(
        "synthetic.sessions_per_day=1500", "drift.min_rows=300", "drift.text_sample=1000"
    )


@pytest.fixture(scope="module")
def shop():
    """Eight days of the tiny shop, busy enough for `min_rows`."""
    params = busy_params()
    world = ShopWorld(params.synthetic, params.seed)
    days = [DAY + dt.timedelta(days=d) for d in range(8)]
    events = pd.concat([simulate_day(world, d).events for d in days], ignore_index=True)
    return params, events, catalogue(world, days[-1]), days


@pytest.fixture(scope="module")
def encoder(shop):
    return base_bi_encoder(shop[0].models)


def _windows(shop, ref_days, cur_days, encoder=None):
    params, events, products, _ = shop
    found = behaviour.searches(behaviour.with_day(events[events["ts"].dt.date.isin(set(ref_days))]))
    norms = behaviour.Norms.of(products, found)
    ref = observe("reference", events, products, ref_days, norms, params.drift)
    cur = observe("current", events, products, cur_days, norms, params.drift)
    if encoder is not None:
        probe = baseline_probe(params, products, encoder)
        for window in (ref, cur):
            probe.apply(window, params.drift.text_sample, params.seed)
    return ref, cur


def test_identical_windows_decide_none(shop, encoder):
    params, _, _, days = shop
    ref, cur = _windows(shop, days[:3], days[:3], encoder)
    features, snapshots = drift.measure(ref, cur, params.drift)
    measured = [f for f in features if f.status == "measured"]
    assert {f.group for f in measured} == {"behaviour", "text", "prediction", "target"}
    assert all(f.score < 1e-9 or f.group == "text" for f in measured)
    # one Evidently run per part: the snapshots that measured them are the pages
    texts = {f.name for f in measured if f.group == "text"}
    assert set(snapshots) == {"tabular", *texts}
    verdict = drift.decide(features, params.drift)
    assert verdict.decision == "none", verdict.reasons


@pytest.mark.parametrize(
    ("knob", "expected"),
    [
        ("new_category", {"click_category", "purchase_category", "new_product"}),
        ("seasonal_shift", {"click_category", "purchase_category"}),
        ("price_change", {"click_price", "purchase_price"}),
        ("new_vocab", {"query_oov"}),
    ],
)
def test_each_injected_drift_retrains_naming_its_features(knob, expected, encoder):
    params = busy_params()
    magnitude = {"price_change": 0.5}.get(knob, 0.3)
    rows = synthetic_run(
        params, params.seed, knob, magnitude, days=1, encoder=encoder, reference_days=5
    )
    assert rows[0]["decision"] == "retrain", rows
    assert expected & set(rows[0]["drifted"]), rows


def test_no_drift_day_after_the_reference_is_quiet(encoder):
    params = busy_params()
    rows = synthetic_run(params, params.seed, None, 0.0, days=1, encoder=encoder, reference_days=5)
    assert rows[0]["decision"] == "none", rows


def test_too_little_data_is_insufficient_not_a_guess(shop):
    params, _events, _products, days = shop
    ref, cur = _windows(shop, days[:3], days[3:4])
    cur.rows = cur.rows.groupby("kind").head(100)
    cur.ctr = cur.ctr.clip(upper=100)
    features, _ = drift.measure(ref, cur, params.drift)
    assert {f.status for f in features} <= {"insufficient_data", "not_applicable"}
    verdict = drift.decide(features, params.drift)
    assert verdict.decision == "insufficient_data"
    assert "min_rows" in verdict.reasons[0]


def test_vanished_searches_and_collapsed_ctr_alert(shop):
    params, _, _, days = shop
    ref, cur = _windows(shop, days[:3], days[3:4])
    no_search = Window("current", cur.days, cur.rows[cur.rows["kind"] != "search"], cur.ctr)
    verdict = drift.decide(drift.measure(ref, no_search, params.drift)[0], params.drift)
    assert verdict.decision == "alert"
    assert any("query_chars" in r and "none in the current" in r for r in verdict.reasons)

    broken = cur.ctr.copy()
    broken["clicks"] = broken["clicks"] // 4
    collapsed = Window("current", cur.days, cur.rows, broken)
    verdict = drift.decide(drift.measure(ref, collapsed, params.drift)[0], params.drift)
    assert verdict.decision == "alert"
    assert any("ctr fell" in r for r in verdict.reasons)


def _feature(name: str, score: float, threshold: float = 0.1) -> drift.FeatureDrift:
    return drift.FeatureDrift(
        name,
        "behaviour",
        "wasserstein",
        threshold,
        "measured",
        score=score,
        drifted=score >= threshold,
    )


QUIET = [_feature(f"f{i}", 0.01) for i in range(8)]


def test_cooldown_silences_the_same_drift_until_it_grows():
    cfg = tiny_params().drift
    today = dt.date(2026, 10, 10)
    features = [_feature("click_price", 0.2), *QUIET]
    first = drift.decide(features, cfg, [], today)
    assert first.decision == "retrain"
    past = [{"date": "2026-10-08", "decision": "retrain", "drifted": first.drifted}]

    same = drift.decide(features, cfg, past, today)
    assert same.decision == "none" and same.cooldown["date"] == "2026-10-08"
    assert any("cool-down" in r for r in same.reasons)

    grown = drift.decide(
        [_feature("click_price", 0.2 * cfg.cooldown_growth + 0.01), *QUIET], cfg, past, today
    )
    assert grown.decision == "retrain"
    other = drift.decide(
        [_feature("click_price", 0.2), _feature("query_oov", 0.3), *QUIET[1:]], cfg, past, today
    )
    assert other.decision == "retrain"
    later = today + dt.timedelta(days=cfg.cooldown_days + 1)
    assert drift.decide(features, cfg, past, later).decision == "retrain"
    rerun_of_that_night = drift.decide(features, cfg, past, dt.date(2026, 10, 8))
    assert rerun_of_that_night.decision == "retrain"


def test_broad_drift_alerts_but_not_on_a_source_with_few_features():
    cfg = tiny_params().drift
    broad = [_feature(f"f{i}", 0.3 if i < 4 else 0.01) for i in range(8)]
    verdict = drift.decide(broad, cfg)
    assert verdict.decision == "alert" and "suspect the data pipeline" in verdict.reasons[-1]
    few = [_feature("basket_size", 0.2), _feature("new_product", 0.3), *QUIET[:2]]
    assert drift.decide(few, cfg).decision == "retrain"  # 2 of 4 moved: a change, not a break


def test_history_replaces_a_rerun_and_rejects_a_damaged_file(tmp_path):
    history = History(tmp_path)
    verdict = drift.Verdict("retrain", ["x"], {"click_price": 0.2}, 0.1)
    history.record(dt.date(2026, 10, 8), verdict)
    history.record(dt.date(2026, 10, 9), drift.Verdict("none", [], {}, 0.0))
    history.record(dt.date(2026, 10, 8), verdict)
    assert [e["date"] for e in history.entries()] == ["2026-10-08", "2026-10-09"]
    assert [e["date"] for e in history.before(dt.date(2026, 10, 9))] == ["2026-10-08"]
    history.path.write_text('{"entries": [{"date": "yesterday"}]}')
    with pytest.raises(StageInputError, match="not a shopflow drift history"):
        history.entries()


def test_vocabulary_leaves_the_rows_own_day_out():
    searches = pd.DataFrame(
        {"query": ["red sofa", "red sofa", "zyx sofa"], "day": [DAY, DAY + dt.timedelta(1), DAY]}
    )
    products = pd.DataFrame({"title": ["Sofa"], "brand": [None], "category": ["Furniture"]})
    vocabulary = behaviour.Vocabulary.of(products, searches)
    assert vocabulary.known("red") and vocabulary.known("sofa")
    assert not vocabulary.known("red", DAY)  # seen on one other day only
    assert not vocabulary.known("zyx")
    assert vocabulary.oov_share("red zyx", DAY + dt.timedelta(5)) == 0.5
    again = behaviour.Vocabulary.from_json(vocabulary.to_json())
    assert again == vocabulary


def test_position_ctr_counts_search_impressions_and_clicks():
    events = pd.DataFrame(
        {
            "query": ["a", "a", "a", None],
            "position": pd.array([1, 2, 1, 1], dtype="Int64"),
            "event_type": ["impression", "impression", "click", "impression"],
        }
    )
    table = behaviour.position_ctr(events, 2)
    assert table.loc["ctr@1"].tolist() == [1, 1]
    assert table.loc["ctr@2"].tolist() == [1, 0]
    assert table.loc["ctr"].tolist() == [2, 1]
    assert np.isclose(table.loc["ctr", "clicks"] / table.loc["ctr", "impressions"], 0.5)

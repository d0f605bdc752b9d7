"""What recommendations know and leave out: interactions, profiles, the exclusion rule and the
held-out task, on hand-made logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shopflow.core.errors import ConfigError
from shopflow.data import profiles
from shopflow.engine.recommend import Recommender, RecommendSettings
from shopflow.evaluation import recommend
from shopflow.models.recommenders import ItemIndex, ItemToItem, Popularity, UserProfiles
from tests.conftest import tiny_params

pytestmark = pytest.mark.unit

DAY = pd.Timedelta(days=1)
START = pd.Timestamp("2026-10-01", tz="UTC")


def log(*rows: tuple[int, str, str, str]) -> pd.DataFrame:
    """(day, user, product, event) rows as the prepare stage's interactions."""
    frame = pd.DataFrame(rows, columns=["day", "user_key", "product_id", "event_type"])
    events = frame.assign(ts=START + frame["day"] * DAY, split="train")
    return profiles.interactions(events)


def test_the_exclusion_rule_is_one_function_with_three_answers():
    bought, seen = ["a"], ["a", "b"]
    assert profiles.excluded(bought, seen, "none") == set()
    assert profiles.excluded(bought, seen, "purchased") == {"a"}
    assert profiles.excluded(bought, seen, "interacted") == {"a", "b"}
    with pytest.raises(ConfigError, match=r"recommend\.exclude"):
        profiles.excluded(bought, seen, "everything")


def test_held_out_purchases_are_distinct_known_customers_flagged_when_they_rebuy():
    acts = log(
        (0, "u1", "mug", "purchase"),
        (1, "u1", "lamp", "click"),
        (5, "u1", "mug", "purchase"),  # a re-buy
        (5, "u1", "mug", "purchase"),  # the same product twice: one target
        (5, "u1", "lamp", "purchase"),  # clicked before, never bought: a discovery
        (6, "u2", "mug", "purchase"),  # u2 was never seen before the split: not a target
    )
    targets = profiles.purchase_targets(acts, START + 4 * DAY, None)
    assert targets.to_dict("records") == [
        {"user_key": "u1", "product_id": "lamp", "rebuy": False},
        {"user_key": "u1", "product_id": "mug", "rebuy": True},
    ]
    assert profiles.rebuy_share(targets) == 0.5
    ending = profiles.purchase_targets(acts, START + 4 * DAY, START + 6 * DAY)
    assert set(ending["user_key"]) == {"u1"}


def test_the_rule_follows_the_data_when_auto():
    starts = {"valid": START + 4 * DAY, "test": START + 6 * DAY}
    rebuying = log(
        (0, "u1", "mug", "purchase"),
        (0, "u2", "tea", "purchase"),
        (4, "u1", "mug", "purchase"),
        (4, "u2", "cup", "purchase"),
    )
    cfg = tiny_params().recommend
    policy = profiles.exclusion_policy(rebuying, starts, cfg)
    assert policy["exclude"] == "none" and policy["rebuy_share"] == {"valid": 0.5}
    assert "re-buy" in policy["reason"]
    discovering = log((0, "u1", "mug", "purchase"), (4, "u1", "cup", "purchase"))
    assert profiles.exclusion_policy(discovering, starts, cfg)["exclude"] == "purchased"
    fixed = cfg.model_copy(update={"exclude": "interacted"})
    assert profiles.exclusion_policy(rebuying, starts, fixed)["exclude"] == "interacted"


def test_profiles_keep_clicks_apart_from_purchases_and_count_days_to_the_cutoff():
    acts = log(
        (0, "u1", "mug", "purchase"), (2, "u1", "mug", "purchase"), (3, "u1", "lamp", "click")
    )
    items = profiles.user_items(acts)
    index = ItemIndex(["mug", "lamp", "tea"])
    prof = UserProfiles.of(items, ["u1", "nobody"], index, START + 5 * DAY)
    assert prof.purchases.toarray().tolist() == [[2, 0, 0], [0, 0, 0]]
    assert prof.purchases.nnz == 1  # a click is no purchase, not even a stored zero
    assert prof.weight.toarray()[0].tolist() == [6, 1, 0]
    assert prof.days_since.toarray()[0].tolist() == [3 + 1, 2 + 1, 0]  # +1: 0 means never
    assert prof.first_days_since.toarray()[0, 0] == 5 + 1


def test_popularity_decays_by_age_and_ease_learns_what_is_bought_together():
    acts = log(
        *[(9, f"u{i}", "new", "purchase") for i in range(2)],
        *[(0, f"u{i}", "old", "purchase") for i in range(3)],
        *[(1, f"v{i}", p, "purchase") for i in range(5) for p in ("tent", "stove")],
        (1, "w", "tent", "purchase"),
    )
    index = ItemIndex(["new", "old", "tent", "stove"])
    as_of = START + 10 * DAY
    flat = Popularity.fit(acts, index, as_of, None).scores
    recent = Popularity.fit(acts, index, as_of, 1.0).scores
    assert flat[1] > flat[0] and recent[0] > recent[1]  # 9 vs 6 weight; a day old vs ten
    ease = ItemToItem.ease(acts, index, l2=1.0, max_items=10, neighbours=3)
    prof = UserProfiles.of(profiles.user_items(acts), ["w"], index, as_of)
    scores = ease.score(prof)[0]
    assert scores.argmax() == index.position["stove"]  # w bought the tent: the stove next
    knn = ItemToItem.knn(acts, index, neighbours=1, shrink=0.0)
    assert knn.weights.getnnz(axis=1).max() == 1  # one neighbour kept per product
    assert knn.score(prof)[0].argmax() == index.position["stove"]


def test_offline_lists_leave_out_what_the_service_leaves_out_under_every_rule():
    acts = log(
        (0, "u1", "mug", "purchase"),
        (0, "u1", "lamp", "click"),
        *[(0, f"v{i}", p, "purchase") for i in range(4) for p in ("mug", "tea", "cup")],
        (5, "u1", "mug", "purchase"),
        (5, "u1", "tea", "purchase"),
    )
    index = ItemIndex(["mug", "lamp", "tea", "cup"])
    task = recommend.task_of(acts, {"valid": START + 4 * DAY, "test": START + 6 * DAY}, "valid")
    assert task is not None and task.users == ["u1"]
    for rule, left_out in (
        ("none", set()),
        ("purchased", {"mug"}),
        ("interacted", {"mug", "lamp"}),
    ):
        settings = RecommendSettings(exclude=rule, serve="buy_again")
        rec = Recommender.fit(acts, index, task.start, settings)
        offline = recommend.lists_of(rec, task, k=4)["u1"]
        served = [p for p, _ in rec.recommend(["u1"], 4)[0]]
        assert offline == served and not set(offline) & left_out
        scores = recommend.evaluate(rec, task, k=1).set_index("product_id")
        # buy again's top 1 is the mug where it may be shown: the re-buy is a hit only then
        assert scores.loc["mug", "hit@1"] == (1.0 if rule == "none" else 0.0)
        assert bool(scores.loc["mug", "rebuy"]) and not scores.loc["tea", "rebuy"]
        assert set(scores["cluster"]) == {"u1"}


def test_a_recommender_saves_and_loads_to_the_same_lists(tmp_path):
    acts = log(
        *[(0, f"v{i}", p, "purchase") for i in range(4) for p in ("mug", "tea")],
        (0, "u", "mug", "purchase"),
    )
    index = ItemIndex(["mug", "tea", "cup"])
    settings = RecommendSettings(exclude="purchased", serve="item_knn", knn_neighbours=2)
    rec = Recommender.fit(acts, index, START + DAY, settings)
    rec.save(tmp_path)
    again = Recommender.load(tmp_path)
    assert again is not None and again.recommend(["u"], 2) == rec.recommend(["u"], 2)
    assert np.array_equal(again.popularity.scores, rec.popularity.scores)
    assert again.knows("u") and not again.knows("stranger")


def test_days_before_the_training_window_are_history_not_training():
    from shopflow.data.splits import split_by_time, time_boundaries, training_days

    params = tiny_params("ingest.window.days=10", "prepare.train_days=3")
    bounds = time_boundaries(params)
    assert (bounds["valid"] - bounds["train"]).days == 3
    days = pd.Series(pd.date_range(params.ingest.window.start, periods=10, freq="D", tz="UTC"))
    assert (
        split_by_time(days, bounds).tolist()
        == ["history"] * 3 + ["train"] * 3 + ["valid"] * 2 + ["test"] * 2
    )
    assert len(training_days(params)) == 3
    everything = tiny_params("ingest.window.days=10")  # train_days null: no history split
    assert "history" not in split_by_time(days, time_boundaries(everything)).tolist()
    assert len(training_days(everything)) == 6

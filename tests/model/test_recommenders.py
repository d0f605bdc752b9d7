"""The recommendation baselines and the mix on a planted shop: each baseline finds the pattern
it is built for, the tuning picks the knob the data needs, and the mix is served only when
it beats the best baseline on customers it never saw."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from shopflow.data import profiles
from shopflow.engine.recommend import MIX, Recommender
from shopflow.evaluation import recommend
from shopflow.models.recommenders import ItemIndex
from shopflow.training.recommend_mix import choose_mix
from tests.conftest import tiny_params

pytestmark = pytest.mark.model

START = pd.Timestamp("2026-09-01", tz="UTC")
DAY = pd.Timedelta(days=1)
STARTS = {"valid": START + 20 * DAY, "test": START + 25 * DAY}


def planted_shop(customers: int = 240, seed: int = 0) -> tuple[pd.DataFrame, ItemIndex]:
    """Half the customers re-order their own staple; the other half buy the partner of a
    product they bought before (products come in pairs that others also buy together)."""
    rng = np.random.default_rng(seed)
    products = [f"p{i}" for i in range(60)]
    rows = []
    for c in range(customers):
        user = f"u{c}"
        if c % 2 == 0:  # a re-buyer: the same staple every few days, plus noise
            staple = products[rng.integers(0, 60)]
            for day in range(1, 29, 4):
                rows.append((day + rng.random(), user, staple, "purchase"))
        else:  # a set buyer: one half of a pair before valid, the other half after
            pair = 2 * int(rng.integers(0, 30))
            rows.append((rng.uniform(0, 19), user, products[pair], "purchase"))
            later = STARTS["valid"] if c % 4 == 1 else STARTS["test"]
            day = (later - START) / DAY + rng.uniform(0, 2.5)
            rows.append((day, user, products[pair + 1], "purchase"))
            for _ in range(2):  # others' baskets teach which products go together
                rows.append((rng.uniform(0, 19), f"basket{c}-{_}", products[pair], "purchase"))
                rows.append((rng.uniform(0, 19), f"basket{c}-{_}", products[pair + 1], "purchase"))
        rows.append((rng.uniform(0, 19), user, products[rng.integers(0, 60)], "click"))
    frame = pd.DataFrame(rows, columns=["day", "user_key", "product_id", "event_type"])
    events = frame.assign(ts=START + frame["day"] * DAY, split="train")
    return profiles.interactions(events), ItemIndex(products)


CFG = tiny_params().recommend.model_copy(
    update={"sources": ["popularity", "buy_again", "ease", "item_knn"], "folds": 3}
)


def tuned(acts: pd.DataFrame, index: ItemIndex) -> tuple:
    """The valid task, the tuned baselines and their figures, and a recommender fitted at
    the valid start with every source the mix may read."""
    valid = recommend.task_of(acts, STARTS, "valid")
    assert valid is not None
    start = recommend.base_settings(CFG, "none", history_items=3)
    settings, info = recommend.tune_baselines(acts, index, valid, CFG, start)
    sources = replace(settings, mix_sources=tuple(CFG.sources))
    return valid, settings, info, Recommender.fit(acts, index, valid.start, sources)


def test_tuning_picks_the_best_baseline_and_the_mix_beats_it_on_unseen_customers():
    acts, index = planted_shop()
    valid, settings, info, at_valid = tuned(acts, index)
    assert len(valid.users) > 60
    assert settings.serve in ("buy_again", "ease")  # each explains half the purchases
    scores = info["valid_ndcg@10"]
    assert scores["popularity"] < min(scores["buy_again"], scores["ease"])
    served, choice = choose_mix(at_valid, valid, CFG, 0.05, 1000, seed=1, tower_ok=False)
    assert choice["chosen"] == "mix" and served.settings.serve == MIX, choice["reasons"]
    assert choice["candidates"]["mix"][f"gain_over_{settings.serve}"] > 0.05
    # a gain the gate would reject for narrowing the catalogue is not chosen either
    strict = choose_mix(
        at_valid, valid, CFG, 0.05, 1000, seed=1, tower_ok=False, coverage_margin=-1
    )
    assert strict[1]["chosen"] == settings.serve and "narrower than" in strict[1]["reasons"][0]
    test = recommend.task_of(acts, STARTS, "test")
    assert test is not None
    mix_test = recommend.evaluate(served.refit(acts, index, test.start), test)
    best_test = recommend.evaluate(Recommender.fit(acts, index, test.start, settings), test)
    assert mix_test["hit@10"].mean() > best_test["hit@10"].mean() + 0.1


def test_a_mix_that_does_not_help_is_left_out():
    acts, index = planted_shop()
    # only re-buyers remain: buy again alone is already right; the mix cannot add anything
    rebuyers = acts[acts["user_key"].str.fullmatch(r"u\d*[02468]")]
    valid, settings, _, at_valid = tuned(rebuyers, index)
    assert settings.serve == "buy_again"
    served, choice = choose_mix(at_valid, valid, CFG, 0.05, 1000, seed=1, tower_ok=False)
    assert choice["chosen"] == "buy_again" and served.settings.serve == "buy_again"

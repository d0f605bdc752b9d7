"""Team-draft interleaving and the click models it is simulated with."""

from __future__ import annotations

import numpy as np
import pytest

from shopflow.evaluation import interleaving

pytestmark = pytest.mark.unit


def test_team_draft_keeps_each_teams_order_and_balances_the_teams():
    rng = np.random.default_rng(0)
    a = [f"a{i}" for i in range(10)]
    b = ["a1", "b1", "a0", "b2", "b3", "b4", "b5", "b6", "b7", "b8"]
    for _ in range(200):
        shown, teams = interleaving.team_draft(a, b, rng)
        assert len(shown) == 10 == len(set(shown))
        assert abs(teams.count(0) - teams.count(1)) <= 1
        for team, ranking in ((0, a), (1, b)):
            picked = [p for p, t in zip(shown, teams, strict=True) if t == team]
            positions = [ranking.index(p) for p in picked]
            assert positions == sorted(positions)  # each team contributes in its own order


def test_team_draft_fills_from_the_other_list_when_one_runs_out():
    shown, teams = interleaving.team_draft(["x"], ["y1", "y2", "y3"], np.random.default_rng(1), 4)
    assert sorted(shown) == ["x", "y1", "y2", "y3"] and teams.count(0) == 1


def qrels_and_rankings(n_queries: int = 60):
    qrels, good, bad = {}, {}, {}
    for q in range(n_queries):
        judged = {f"q{q}p{i}": float(3 - min(i, 3)) for i in range(20)}
        qrels[f"q{q}"] = judged
        good[f"q{q}"] = list(judged)  # best first
        bad[f"q{q}"] = list(judged)[::-1]
    return qrels, good, bad


def test_the_better_ranking_wins_and_identical_rankings_tie():
    qrels, good, bad = qrels_and_rankings()
    model = interleaving.synthetic_click_model()
    won = interleaving.simulate(bad, good, qrels, model, sessions=3000, seed=1)
    assert won.win_rate > 0.8 and won.ci_low > 0.5
    assert won.ctr_challenger > won.ctr_champion
    same = interleaving.simulate(good, good, qrels, model, sessions=3000, seed=1)
    assert same.ci_low < 0.5 < same.ci_high
    assert same.ctr_challenger == same.ctr_champion


def test_the_assumed_click_model_maps_grades_like_err():
    model = interleaving.assumed_click_model(3.0)
    assert model.attraction[0.0] == 0 and model.attraction[3.0] == 1
    assert model.attraction[2.0] == pytest.approx(3 / 7)
    assert model.examination[1] == pytest.approx(0.5)
    assert 0 < model._gamma(2.5) < 1  # grades between the known ones are interpolated


def test_the_fitted_click_model_recovers_planted_attractiveness():
    rng = np.random.default_rng(4)
    theta = 1 / np.arange(1, 11)
    gamma = {0.0: 0.05, 1.0: 0.3, 2.0: 0.7}
    grades = rng.choice([0.0, 1.0, 2.0], 60_000)
    positions = rng.integers(1, 11, 60_000)
    clicked = rng.random(60_000) < theta[positions - 1] * np.vectorize(gamma.get)(grades)
    model = interleaving.fitted_click_model(theta, grades, clicked, positions)
    for grade, value in gamma.items():
        assert model.attraction[grade] == pytest.approx(value, abs=0.03)

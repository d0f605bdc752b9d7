"""The promotion gate's rules, on numbers whose verdict is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shopflow.evaluation import significance
from shopflow.evaluation.gate import Guardrail, decide
from tests.conftest import tiny_params

pytestmark = pytest.mark.unit

GATE = tiny_params().gate


def primary(challenger: np.ndarray, champion: np.ndarray) -> dict:
    return {"metric": "search_ndcg@10", **significance.compare(challenger, champion, seed=0)}


def interleaved(win_rate: float, low: float, high: float) -> dict:
    return {
        "win_rate": win_rate,
        "ci_low": low,
        "ci_high": high,
        "wins": 600,
        "losses": 400,
        "sessions": 2000,
        "click_model": "test",
    }


def champion_scores(n: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).beta(2, 2, n)


def noise(n: int = 200, seed: int = 1, sd: float = 0.05) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, sd, n)


def test_a_better_challenger_is_promoted():
    champ = champion_scores()
    decision = decide(
        primary(champ + 0.05 + noise(), champ), interleaved(0.6, 0.56, 0.64), [], GATE
    )
    assert decision["verdict"] == "promote"
    assert decision["reasons"][0].startswith("every check passed")


def test_a_worse_challenger_is_rejected_on_the_primary_metric():
    champ = champion_scores()
    decision = decide(
        primary(champ - 0.05 + noise(), champ), interleaved(0.4, 0.36, 0.44), [], GATE
    )
    assert decision["verdict"] == "reject"
    failed = {c["name"] for c in decision["checks"] if not c["passed"]}
    assert failed == {"primary gain", "significance", "interleaving"}
    assert any("search_ndcg@10" in r for r in decision["reasons"])


def test_a_gain_within_noise_is_not_enough():
    champ = champion_scores()
    centred = noise(sd=0.2) - noise(sd=0.2).mean()  # the gain is exactly 0.006, noise is large
    decision = decide(primary(champ + 0.006 + centred, champ), None, [], GATE)
    assert decision["verdict"] == "reject"
    assert [c["name"] for c in decision["checks"] if not c["passed"]] == ["significance"]


def test_an_interleaving_interval_touching_one_half_rejects_unless_not_required():
    champ = champion_scores()
    better = champ + 0.05 + noise()
    loose = interleaved(0.53, 0.49, 0.57)
    assert decide(primary(better, champ), loose, [], GATE)["verdict"] == "reject"
    relaxed = GATE.model_copy(update={"require_interleaving": False})
    assert decide(primary(better, champ), loose, [], relaxed)["verdict"] == "promote"


def test_a_better_challenger_that_breaks_a_guardrail_is_rejected_naming_it():
    champ = champion_scores()
    rails = [
        Guardrail("search recall@100", 0.90, 0.91, 0.01, p_worse=0.4),  # within its margin
        Guardrail("slice category=Garden ndcg@10", 0.50, 0.70, 0.02, p_worse=0.001),
        Guardrail("brand exposure disparity", 0.30, 0.20, 0.05, higher_is_better=False),
    ]
    decision = decide(
        primary(champ + 0.05 + noise(), champ), interleaved(0.6, 0.56, 0.64), rails, GATE
    )
    assert decision["verdict"] == "reject"
    assert len(decision["reasons"]) == 2
    assert decision["reasons"][0].startswith("guardrail slice category=Garden ndcg@10")
    assert "worse by 0.2000" in decision["reasons"][0]
    assert decision["reasons"][1].startswith("guardrail brand exposure disparity")
    passed = {g["name"]: g["passed"] for g in decision["guardrails"]}
    assert passed == {
        "search recall@100": True,
        "slice category=Garden ndcg@10": False,
        "brand exposure disparity": False,
    }


def test_a_slice_drop_that_noise_explains_does_not_block():
    rail = Guardrail("slice traffic=tail ndcg@10", 0.60, 0.65, 0.02, p_worse=0.3)
    assert rail.passed(alpha=0.05)
    assert not Guardrail("slice x", 0.60, 0.65, 0.02, p_worse=0.01).passed(alpha=0.05)


def test_latency_has_a_relative_margin_and_an_absolute_limit():
    ok = Guardrail("p95 ms", 120, 100, 0.5, higher_is_better=False, relative=True, limit=2000)
    slow = Guardrail("p95 ms", 160, 100, 0.5, higher_is_better=False, relative=True, limit=2000)
    over = Guardrail("p95 ms", 2500, 2400, np.inf, higher_is_better=False, limit=2000)
    assert ok.passed(0.05) and not slow.passed(0.05) and not over.passed(0.05)
    assert "over the limit" in over.describe(0.05)


def test_decisions_serialise_to_json():
    import json

    champ = champion_scores()
    rails = [Guardrail("search coverage@10", 0.3, 0.31, 0.02)]
    decision = decide(primary(champ + 0.05 + noise(), champ), None, rails, GATE)
    assert json.loads(json.dumps(decision))["verdict"] == "promote"
    assert pd.DataFrame(decision["guardrails"])["passed"].all()

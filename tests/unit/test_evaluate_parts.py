"""The A/B evaluation's slices and exposure numbers, on hand-made catalogues."""

from __future__ import annotations

import pandas as pd
import pytest

from shopflow.evaluation.guardrails import beyond_accuracy, query_slices
from shopflow.evaluation.heldout import HeldOut
from tests.conftest import tiny_params

pytestmark = pytest.mark.unit


def split_of(products: pd.DataFrame) -> HeldOut:
    qrels = {"red sofa": {"p1": 3.0, "p2": 0.0}, "garden hose": {"p3": 2.0, "p4": 1.0}}
    return HeldOut(products, qrels, None, None, pd.Series({"p1": 5.0, "p3": 1.0}))


def test_slices_and_brand_exposure_of_a_shop_with_categories_brands_and_logs():
    products = pd.DataFrame(
        {
            "product_id": ["p1", "p2", "p3", "p4"],
            "category": ["Furniture > Sofas", "Furniture > Sofas", "Garden > Hoses", None],
            "brand": ["A", "B", "A", "C"],
        }
    )
    pairs = pd.DataFrame(
        {
            "split": ["train"] * 3,
            "session_id": ["s1", "s2", "s3"],
            "query": ["red sofa", "red sofa", "lamp"],
            "product_id": ["p1", "p1", "p9"],
            "label": [1, 1, 0],
        }
    )
    params = tiny_params("evaluation.head_min_count=2")
    slices = query_slices(split_of(products), {"pairs": pairs}, params).set_index("query")
    assert slices.loc["red sofa"].to_dict() == {
        "category": "Furniture",
        "traffic": "head",
        "products": "warm",
    }
    assert slices.loc["garden hose"].to_dict() == {
        "category": "Garden",
        "traffic": "tail",
        "products": "cold-start",
    }
    scored = {"search_lists": [["p2", "p1"], ["p3", "p4"]]}
    search = beyond_accuracy(scored, split_of(products), params)["search"]
    assert search["coverage@10"] == 1.0
    assert 0 < search["brand_disparity"] < 1  # brand B is shown first but is never relevant


def test_a_catalogue_without_categories_brands_or_logs_gets_no_such_slices_or_guardrail():
    products = pd.DataFrame({"product_id": ["p1", "p2", "p3", "p4"], "title": list("abcd")})
    params = tiny_params()
    slices = query_slices(split_of(products), {}, params)
    assert slices[["category", "traffic", "products"]].isna().all().all()
    search = beyond_accuracy({"search_lists": [["p1"], ["p3"]]}, split_of(products), params)
    assert search["search"]["brand_disparity"] is None

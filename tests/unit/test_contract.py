import json

import pandas as pd
import pytest

from shopflow.core.errors import SourceError
from shopflow.data.contract import conform, describe_rejects, stable_product_id

pytestmark = pytest.mark.unit


def test_conform_casts_and_orders_columns():
    raw = pd.DataFrame(
        {
            "title": ["Sofa"],
            "product_id": [42],
            "price": ["19.5"],
            "attributes": ['{"colour": "grey"}'],
        }
    )
    good, rejects = conform(raw, "products", "x.csv")
    assert rejects.empty
    assert list(good.columns)[:3] == ["product_id", "title", "description"]
    assert good.loc[0, "product_id"] == "42" and good.loc[0, "price"] == 19.5
    assert json.loads(good.loc[0, "attributes"]) == {"colour": "grey"}


def test_unparseable_values_are_rejected_with_row_and_column():
    raw = pd.DataFrame(
        {"product_id": ["a", "b", "c"], "title": ["x", "y", "z"], "price": ["1", "abc", None]}
    )
    good, rejects = conform(raw, "products", "cat.csv")
    assert list(good["product_id"]) == ["a", "c"]
    assert rejects.loc[0, "source_row"] == 2 and rejects.loc[0, "column"] == "price"  # 1-based
    assert rejects.loc[0, "unit"] == "row"
    message = describe_rejects(rejects, "cat.csv")
    assert "cat.csv" in message and "products.price" in message and "'abc'" in message


def test_missing_required_columns_are_named():
    raw = pd.DataFrame({"when": ["2026-01-01"], "product_id": ["a"]})
    with pytest.raises(SourceError) as err:
        conform(raw, "events", "log.csv")
    assert (
        "ts" in str(err.value)
        and "session_id" in str(err.value)
        and "found: when" in str(err.value)
    )


def test_naive_timestamps_are_taken_as_utc():
    raw = pd.DataFrame(
        {
            "ts": ["2026-10-01 10:00:00"],
            "session_id": ["s"],
            "user_key": ["u"],
            "product_id": ["p"],
            "event_type": ["click"],
            "position": ["3"],
        }
    )
    good, _ = conform(raw, "events", "log.csv")
    assert str(good["ts"].dtype) == "datetime64[ns, UTC]"
    assert good.loc[0, "ts"].hour == 10 and good.loc[0, "position"] == 3


def test_fractional_position_is_rejected():
    raw = pd.DataFrame(
        {
            "ts": ["2026-10-01"],
            "session_id": ["s"],
            "user_key": ["u"],
            "product_id": ["p"],
            "event_type": ["click"],
            "position": ["2.5"],
        }
    )
    _, rejects = conform(raw, "events", "log.csv")
    assert rejects.loc[0, "column"] == "position"


def test_stable_product_id_ignores_case_and_spacing():
    assert stable_product_id("Grey  Sofa", "Acme") == stable_product_id("grey sofa", "ACME")
    assert stable_product_id("Grey Sofa") != stable_product_id("Blue Sofa")

"""Each adapter on a small fixture written in the source's real format (and on ../shared data)."""

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from shopflow.core.errors import EmptyDataError, SourceError
from shopflow.data import normalize as contract
from shopflow.data.sources import read_source
from tests.conftest import shared_file, tiny_params

pytestmark = pytest.mark.data
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
KEY = b"k"


def normalize(*overrides: str):
    params = tiny_params(*overrides)
    return contract.normalize(read_source(params), params, KEY, NOW)


def write_homedepot(path: Path) -> Path:
    frame = pd.DataFrame(
        {
            "id": [2, 3, 9, 10],
            "product_uid": [100001, 100001, 100002, 100003],
            "product_title": [
                "Simpson Strong-Tie Angle",
                "Simpson Strong-Tie Angle",
                "Déck Over Coating",
                "Drill",
            ],
            "search_term": ["angle bracket", "l bracket", "deck over", "cordless drill"],
            "relevance": [3.0, 2.5, 2.33, 1.0],
        }
    )
    frame.to_csv(path, index=False, encoding="latin-1")
    return path


HOMEDEPOT_MAPPING = "{query: search_term, product_id: product_uid, title: product_title}"


def test_generic_judgments_homedepot_format(tmp_path):
    path = write_homedepot(tmp_path / "train.csv")
    result = normalize(
        "ingest.source=judgments",
        f"ingest.path={path}",
        "ingest.encoding=latin-1",
        f"++ingest.mapping={HOMEDEPOT_MAPPING}",
        "++ingest.options={relevance_scale: [1, 3]}",
    )
    products, judgments = result.tables["products"], result.tables["judgments"]
    assert list(products["product_id"]) == ["100001", "100002", "100003"]
    assert "Déck Over Coating" in set(products["title"])
    assert len(judgments) == 4 and judgments["relevance"].max() == 3.0
    assert result.manifest["relevance_scale"] == [1.0, 3.0]


def test_judgments_without_product_ids_get_stable_ones(tmp_path):
    path = tmp_path / "j.parquet"
    pd.DataFrame(
        {
            "q": ["sofa", "sofa", "lamp"],
            "name": ["Grey Sofa", "Blue Sofa", "Grey Sofa"],
            "grade": [2, 0, 1],
        }
    ).to_parquet(path)
    first = normalize(
        "ingest.source=judgments",
        f"ingest.path={path}",
        "++ingest.mapping={query: q, title: name, relevance: grade}",
    )
    again = normalize(
        "ingest.source=judgments",
        f"ingest.path={path}",
        "++ingest.mapping={query: q, title: name, relevance: grade}",
    )
    ids = first.tables["judgments"]["product_id"]
    assert ids[0] == ids[2] != ids[1]
    assert list(ids) == list(again.tables["judgments"]["product_id"])
    assert len(first.tables["products"]) == 2
    assert first.manifest["relevance_scale"] == [0.0, 2.0]  # observed, not declared


def write_events(tmp_path: Path) -> tuple[Path, Path]:
    log = pd.DataFrame(
        {
            "timestamp": [
                "2026-10-01T10:00:00Z",
                "2026-10-01T10:00:00Z",
                "2026-10-01T10:00:05Z",
                "2026-10-02T12:00:00Z",
                "2026-09-01T00:00:00Z",
            ],
            "visitor": [
                "alice@example.com",
                "alice@example.com",
                "alice@example.com",
                "bob",
                "carol",
            ],
            "q": [
                "grey sofa call 0161 496 0123",
                "grey sofa call 0161 496 0123",
                "grey sofa call 0161 496 0123",
                None,
                None,
            ],
            "item": ["p1", "p2", "p1", "p2", "p1"],
            "rank": [1, 2, 1, None, None],
            "action": ["view", "view", "click", "buy", "buy"],
        }
    )
    catalogue = pd.DataFrame(
        {"sku": ["p1", "p2"], "name": ["Grey Sofa", "Blue Sofa"], "cost": [300.0, 250.0]}
    )
    log.to_csv(tmp_path / "events.csv", index=False)
    catalogue.to_csv(tmp_path / "products.csv", index=False)
    return tmp_path / "events.csv", tmp_path / "products.csv"


def events_overrides(log: Path, products: Path) -> list[str]:
    return [
        "ingest.source=events",
        f"ingest.path={log}",
        "ingest.window={end: '2026-10-02', days: 2}",
        "++ingest.mapping={ts: timestamp, user_key: visitor, query: q, product_id: item, position: rank, event_type: action}",
        "++ingest.options={event_type_map: {view: impression, buy: purchase}, "
        f"products_path: '{products}', products_mapping: {{product_id: sku, title: name, price: cost}}}}",
    ]


def test_generic_events_with_catalogue_sessionized_pseudonymized_scrubbed(tmp_path):
    log, products = write_events(tmp_path)
    result = normalize(*events_overrides(log, products))
    events = result.tables["events"]
    assert len(events) == 4  # the September row is outside the window
    assert set(events["event_type"]) == {"impression", "click", "purchase"}
    assert events["user_key"].str.match(r"^u_[0-9a-f]{16}$").all()
    assert events["session_id"].nunique() == 2  # cut by user + inactivity
    assert not events["query"].dropna().str.contains("0161").any()
    assert events["query"].dropna().str.contains("<phone>").all()
    assert result.tables["products"]["price"].tolist() == [300.0, 250.0]


def test_events_need_a_catalogue(tmp_path):
    log, _ = write_events(tmp_path)
    overrides = [
        *events_overrides(log, tmp_path / "products.csv")[:-1],
        "++ingest.options={event_type_map: {view: impression, buy: purchase}}",
    ]
    with pytest.raises(SourceError, match="products_path"):
        normalize(*overrides)


def test_events_window_without_rows_says_what_the_source_covers(tmp_path):
    log, products = write_events(tmp_path)
    overrides = events_overrides(log, products)
    overrides[2] = "ingest.window={end: '2027-01-31', days: 3}"
    with pytest.raises(
        EmptyDataError, match=r"no events in the window 2027-01-29 .. 2027-01-31.*2026-09-01"
    ):
        normalize(*overrides)


def test_esci(tmp_path):
    pd.DataFrame(
        {
            "example_id": [1, 2, 3, 4],
            "query": ["couch", "couch", "lamp", "sofá"],
            "query_id": [1, 1, 2, 3],
            "product_id": ["B1", "B2", "B3", "B4"],
            "product_locale": ["us", "us", "us", "es"],
            "esci_label": ["E", "I", "S", "E"],
            "small_version": [1, 1, 0, 1],
            "large_version": 1,
            "split": "train",
        }
    ).to_parquet(tmp_path / "shopping_queries_dataset_examples.parquet")
    pd.DataFrame(
        {
            "product_id": ["B1", "B2", "B3", "B4"],
            "product_title": ["Sofa", "Pan", "Lamp", "Sofá"],
            "product_description": [None, "A pan", None, None],
            "product_bullet_point": ["Comfy", None, None, None],
            "product_brand": ["Acme", None, "Lumo", None],
            "product_color": ["grey", None, "", None],
            "product_locale": ["us", "us", "us", "es"],
        }
    ).to_parquet(tmp_path / "shopping_queries_dataset_products.parquet")
    result = normalize("ingest.source=esci", f"ingest.path={tmp_path}")
    judged = result.tables["judgments"]
    assert judged["relevance"].tolist() == [3.0, 0.0, 2.0]
    products = result.tables["products"].set_index("product_id")
    assert products.loc["B1", "description"] == "Comfy" and "B4" not in products.index
    small = normalize(
        "ingest.source=esci", f"ingest.path={tmp_path}", "++ingest.options={small_version: true}"
    )
    assert len(small.tables["judgments"]) == 2


def test_wands(tmp_path):
    pd.DataFrame(
        {
            "product_id": [0, 1],
            "product_name": ["solid wood sofa", "floor lamp"],
            "product_class": ["Sofas", "Lamps"],
            "category hierarchy": ["Furniture / Sofas", "Lighting"],
            "product_description": ["nice", None],
            "product_features": ["color:grey|material:oak", None],
            "rating_count": [1, 2],
            "average_rating": [5, 4],
            "review_count": [1, 1],
        }
    ).to_csv(tmp_path / "product.csv", sep="\t", index=False)
    pd.DataFrame({"query_id": [0], "query": ["wood sofa"], "query_class": ["Sofas"]}).to_csv(
        tmp_path / "query.csv", sep="\t", index=False
    )
    pd.DataFrame(
        {"id": [0, 1], "query_id": [0, 0], "product_id": [0, 1], "label": ["Exact", "Irrelevant"]}
    ).to_csv(tmp_path / "label.csv", sep="\t", index=False)
    result = normalize("ingest.source=wands", f"ingest.path={tmp_path}")
    assert result.tables["judgments"]["relevance"].tolist() == [2.0, 0.0]
    assert '"material": "oak"' in result.tables["products"].loc[0, "attributes"]
    assert result.manifest["relevance_scale"] == [0.0, 2.0]


def write_online_retail(path: Path, variant: int) -> Path:
    names = (
        ["InvoiceNo", "UnitPrice", "CustomerID"]
        if variant == 1
        else ["Invoice", "Price", "Customer ID"]
    )
    pd.DataFrame(
        {
            names[0]: ["536365", "536365", "C536379", "536380", "536381"],
            "StockCode": ["85123A", "71053", "85123A", "POST", "71053"],
            "Description": [
                "WHITE HANGING HEART",
                "WHITE METAL LANTERN",
                "WHITE HANGING HEART",
                "POSTAGE",
                "WHITE METAL LANTERN",
            ],
            "Quantity": [6, 6, -6, 1, 2],
            "InvoiceDate": pd.to_datetime(
                [
                    "2010-12-01 08:26",
                    "2010-12-01 08:26",
                    "2010-12-01 09:00",
                    "2010-12-01 09:10",
                    "2010-12-02 10:00",
                ]
            ),
            names[1]: [2.55, 3.39, 2.55, 18.0, 3.39],
            names[2]: [17850.0, 17850.0, 17850.0, None, None],
            "Country": "United Kingdom",
        }
    ).to_parquet(path)
    return path


@pytest.mark.parametrize("variant", [1, 2])
def test_online_retail(tmp_path, variant):
    path = write_online_retail(tmp_path / "retail.parquet", variant)
    result = normalize(
        "ingest.source=online_retail",
        f"ingest.path={path}",
        "ingest.window={end: '2010-12-02', days: 2}",
    )
    events = result.tables["events"]
    assert len(events) == 3 and set(events["event_type"]) == {"purchase"}
    assert (
        events["user_key"].str.match(r"^u_").all()
        and not events["user_key"].str.contains("17850").any()
    )
    assert events["session_id"].nunique() == 2
    assert events["ts"].iloc[0] == pd.Timestamp("2010-12-01 08:26", tz="UTC")  # GMT in December
    assert result.manifest["notes"] == {
        "cancelled_lines": 1,
        "non_product_lines": 1,
        "lines_without_description": 0,
    }
    assert set(result.tables["products"]["product_id"]) == {"85123A", "71053"}


@pytest.mark.shared
def test_real_homedepot_ingests():
    path = shared_file("homedepot", "train.csv.zip")
    result = normalize(
        "ingest.source=judgments",
        f"ingest.path={path}",
        "ingest.encoding=latin-1",
        f"++ingest.mapping={HOMEDEPOT_MAPPING}",
        "++ingest.options={relevance_scale: [1, 3]}",
    )
    assert len(result.tables["judgments"]) == 74_067
    assert result.tables["judgments"]["query"].nunique() > 11_000
    assert result.tables["products"]["product_id"].is_unique


@pytest.mark.shared
def test_real_online_retail_ingests():
    path = shared_file("online_retail", "online_retail_2010_2011.parquet")
    result = normalize(
        "ingest.source=online_retail",
        f"ingest.path={path}",
        "ingest.window={end: '2011-12-09', days: 31}",
    )
    events = result.tables["events"]
    assert 10_000 < len(events) < 100_000
    assert events["ts"].min() >= pd.Timestamp("2011-11-09", tz="UTC")
    assert result.manifest["notes"]["cancelled_lines"] > 0

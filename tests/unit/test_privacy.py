import pandas as pd
import pytest

from shopflow.data.privacy import key_fingerprint, luhn_valid, pseudonymize, scrub_text

pytestmark = pytest.mark.unit


def test_pseudonyms_are_stable_keyed_and_keep_nulls():
    ids = pd.Series(["alice", "bob", None, "alice"])
    first = pseudonymize(ids, b"k1")
    assert first[0] == first[3] != first[1]
    assert first[2] is None
    assert first[0].startswith("u_") and len(first[0]) == 18
    assert pseudonymize(ids, b"k1").equals(first)
    assert pseudonymize(ids, b"k2")[0] != first[0]
    assert "alice" not in "".join(first.dropna())


def test_numeric_ids_are_pseudonymized_like_their_text():
    assert pseudonymize(pd.Series([17850]), b"k")[0] == pseudonymize(pd.Series(["17850"]), b"k")[0]


def test_key_fingerprint_does_not_reveal_the_key():
    assert "secret" not in key_fingerprint(b"secret")
    assert key_fingerprint(b"a") != key_fingerprint(b"b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sofa john.smith@example.com", "sofa <email>"),
        ("call 0161 496 0123 about tent", "call <phone> about tent"),
        ("+44 7700 900123", "<phone>"),
        ("pay with 4111 1111 1111 1111", "pay with <card>"),
        ("4111-1111-1111-1111", "<card>"),
    ],
)
def test_pii_is_replaced(text, expected):
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    ["size 10 12 14", "65 inch tv 2024", "iphone 15 pro max 256gb", "x2000 blender", "sku 85123a"],
)
def test_product_text_survives(text):
    assert scrub_text(text) == text


def test_luhn():
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_scrub_series_keeps_nulls_and_order():
    from shopflow.data.privacy import scrub_series

    texts = pd.Series(["sofa", None, "me@x.io sofa", "sofa", "me@x.io sofa"], index=[5, 6, 7, 8, 9])
    out = scrub_series(texts)
    assert out.tolist() == ["sofa", None, "<email> sofa", "sofa", "<email> sofa"]
    assert list(out.index) == [5, 6, 7, 8, 9]
    assert scrub_series(pd.Series([None, None])).tolist() == [None, None]

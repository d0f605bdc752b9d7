import pandas as pd
import pytest

from shopflow.core.errors import ConfigError
from shopflow.core.secrets import MODE_ENV, Mode, mode_for, new_key
from shopflow.data.privacy import (
    DEV_KEY,
    KEY_ENV,
    key_fingerprint,
    luhn_valid,
    pseudonym_key,
    pseudonymize,
    scrub_text,
)

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


# -- keys fail closed ---------------------------------------------------------------------


@pytest.fixture
def no_keys(monkeypatch):
    for var in (KEY_ENV, f"{KEY_ENV}_FILE", MODE_ENV):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_production_is_every_source_but_the_synthetic_demo(no_keys):
    assert mode_for("synthetic") == Mode.DEMO
    for source in ("judgments", "events", "esci", "wands", "online_retail"):
        assert mode_for(source) == Mode.PRODUCTION
    no_keys.setenv(MODE_ENV, "production")
    assert mode_for("synthetic") == Mode.PRODUCTION
    no_keys.setenv(MODE_ENV, "demo")
    with pytest.raises(ConfigError, match="only for the embedded synthetic shop"):
        mode_for("online_retail")


def test_production_refuses_a_missing_short_or_development_key_naming_the_variable(no_keys):
    with pytest.raises(ConfigError, match=rf"{KEY_ENV} is not set.*secret store"):
        pseudonym_key(Mode.PRODUCTION)
    no_keys.setenv(KEY_ENV, DEV_KEY)
    with pytest.raises(ConfigError, match=f"{KEY_ENV} holds the public development key"):
        pseudonym_key(Mode.PRODUCTION)
    no_keys.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigError, match=r"5 characters.*at least 32"):
        pseudonym_key(Mode.PRODUCTION)
    no_keys.setenv(KEY_ENV, "k" * 40)
    assert pseudonym_key(Mode.PRODUCTION) == b"k" * 40


def test_a_key_file_is_read_like_a_mounted_secret(no_keys, tmp_path):
    (tmp_path / "key").write_text("f" * 64 + "\n")
    no_keys.setenv(f"{KEY_ENV}_FILE", str(tmp_path / "key"))
    assert pseudonym_key(Mode.PRODUCTION) == b"f" * 64
    no_keys.setenv(f"{KEY_ENV}_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=rf"{KEY_ENV}_FILE=.*cannot read"):
        pseudonym_key(Mode.PRODUCTION)


def test_the_demo_falls_back_to_the_development_key_with_a_warning(no_keys, caplog):
    assert pseudonym_key(Mode.DEMO) == DEV_KEY.encode()
    assert "public development key" in caplog.text


def test_with_the_development_key_guessable_ids_are_reversed_so_production_refuses_it(no_keys):
    """The leak probe: with a public key and ids that follow a pattern, hashing the
    candidates reverses every pseudonym. Only the demo may use that key."""
    raw = pd.Series([f"C{n:05d}" for n in range(0, 3000, 7)])
    published = pseudonymize(raw, DEV_KEY.encode())
    guesses = pd.Series([f"C{n:05d}" for n in range(3000)])
    table = dict(zip(pseudonymize(guesses, DEV_KEY.encode()), guesses, strict=True))
    assert all(table[p] == r for p, r in zip(published, raw, strict=True))  # all reversed
    with pytest.raises(ConfigError):
        pseudonym_key(mode_for("online_retail"))
    no_keys.setenv(KEY_ENV, new_key())
    secret = pseudonymize(raw, pseudonym_key(mode_for("online_retail")))
    assert not set(secret) & set(table)  # the same guesses reverse nothing

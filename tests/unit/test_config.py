import datetime as dt

import pytest

from shopflow.core.config import Window, load_params
from shopflow.core.errors import ConfigError
from tests.conftest import ROOT, tiny_params

pytestmark = pytest.mark.unit


def test_default_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.profile == "default"
    assert params.ingest.source == "synthetic"


def test_profile_overrides_merge_over_sections():
    params = tiny_params()
    default = load_params(ROOT / "params.yaml")
    assert params.synthetic.n_products < default.synthetic.n_products
    assert params.synthetic.search_share == default.synthetic.search_share  # untouched key kept


def test_cli_style_overrides():
    params = tiny_params("ingest.window.days=5", "synthetic.drift.new_vocab=0.3")
    assert params.ingest.window.days == 5
    assert params.synthetic.drift.new_vocab == 0.3


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"synthetic\.n_prodcts"):
        tiny_params("synthetic.n_prodcts=5")


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"ingest\.window\.days"):
        tiny_params("ingest.window.days=0")


def test_unknown_profile():
    with pytest.raises(ConfigError, match="profile 'huge' is not defined"):
        load_params(ROOT / "params.yaml", ["profile=huge"])


def test_malformed_override():
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        tiny_params("no-equals-sign")


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_window_bounds():
    window = Window(end=dt.date(2026, 10, 28), days=28)
    assert window.start == dt.date(2026, 10, 1)
    start, end = window.bounds()
    assert (end - start).days == 28 and start.tzinfo is dt.UTC

import datetime as dt

import pytest

from shopflow.core.config import Window, load_params, update_local_params
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


def test_params_local_yaml_applies_over_the_profile_and_under_cli_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    assert update_local_params(path, {"profile": "tiny", "retriever": {"steps": 5}})
    assert update_local_params(path, {"ingest": {"window": {"end": "2026-10-30"}}})
    local = (tmp_path / "params.local.yaml").read_text()
    assert "steps: 5" in local and "2026-10-30" in local  # merged, not replaced
    params = load_params(path)
    assert params.profile == "tiny" and params.ingest.window.days == 10  # selects the profile
    assert params.retriever.steps == 5  # over the tiny profile's 40
    assert params.ingest.window.end == dt.date(2026, 10, 30)
    assert load_params(path, ["retriever.steps=7"]).retriever.steps == 7  # -S wins
    assert not update_local_params(path, {"retriever": {"steps": 5}})  # nothing new


def test_a_bad_params_local_yaml_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "params.local.yaml").write_text("retriever: {stepz: 5}\n")
    with pytest.raises(ConfigError, match=r"params\.local\.yaml.*retriever\.stepz"):
        load_params(path)
    (tmp_path / "params.local.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"params\.local\.yaml: expected a mapping"):
        load_params(path)

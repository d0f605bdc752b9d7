import datetime as dt
import re
import shutil

import pytest
import yaml

from shopflow.core.config import (
    Window,
    compose,
    flatten,
    load_params,
    set_params,
    write_params,
)
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
    with pytest.raises(ConfigError, match=r"synthetic\.n_prodcts"):
        tiny_params("+synthetic.n_prodcts=5")  # Hydra can add it; the schema still refuses it


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"ingest\.window\.days"):
        tiny_params("ingest.window.days=0")


def test_unknown_profile():
    with pytest.raises(ConfigError, match=r"(?s)profile=huge.*gpu.*tiny"):  # names the known ones
        load_params(ROOT / "params.yaml", ["profile=huge"])


def test_malformed_override():
    with pytest.raises(ConfigError, match=r"-S no-equals-sign"):
        tiny_params("no-equals-sign")


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_window_bounds():
    window = Window(end=dt.date(2026, 10, 28), days=28)
    assert window.start == dt.date(2026, 10, 1)
    start, end = window.bounds()
    assert (end - start).days == 28 and start.tzinfo is dt.UTC


def test_the_committed_params_yaml_is_the_composition_of_conf():
    """What `dvc exp run` and `shopflow params --write` would write, byte for byte: a fresh
    clone's `dvc repro` runs on exactly the values conf/ says."""
    assert (ROOT / "params.yaml").read_text() == compose(ROOT / "conf")


@pytest.mark.parametrize("profile", ["default", "tiny", "gpu"])
def test_the_last_override_wins_under_every_profile(profile):
    """`-S retriever.steps=...` after a profile is the value every stage reads, whatever the
    profile sets (the profile is composed first, then each override in order)."""
    params = load_params(ROOT / "params.yaml", [f"profile={profile}", "retriever.steps=7"])
    assert params.profile == profile and params.retriever.steps == 7
    twice = load_params(ROOT / "params.yaml", [f"profile={profile}", "seed=1", "seed=2"])
    assert twice.seed == 2


def test_write_params_then_set_params_keep_one_file_of_effective_values(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    path = write_params(tmp_path / "params.yaml", ["profile=tiny", "retriever.steps=5"])
    params = load_params(path)
    assert params.profile == "tiny" and params.ingest.window.days == 10
    assert params.retriever.steps == 5
    assert set_params(path, {"ingest.window.end": "2026-10-30"})
    assert not set_params(path, {"ingest.window.end": "2026-10-30"})  # nothing new
    params = load_params(path)
    assert params.ingest.window.end == dt.date(2026, 10, 30) and params.retriever.steps == 5
    with pytest.raises(ConfigError, match=r"retriever\.stepz.*no such key"):
        set_params(path, {"retriever.stepz": 5})
    with pytest.raises(ConfigError, match=r"retriever\.steps"):
        set_params(path, {"retriever.steps": -1})
    assert load_params(path).retriever.steps == 5  # a refused value never reaches the file


def test_params_write_replaces_a_params_yaml_older_than_conf(tmp_path):
    """After an upgrade adds a section to conf/, `shopflow params --write` composes afresh
    (reading the old params.yaml first would refuse it for the missing section)."""
    from shopflow.cli import main

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    old = yaml.safe_load((ROOT / "params.yaml").read_text())
    old.pop("privacy")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="privacy"):
        load_params(tmp_path / "params.yaml")
    assert main(["--params", str(tmp_path / "params.yaml"), "params", "--write"]) == 0
    assert (tmp_path / "params.yaml").read_text() == compose(tmp_path / "conf")


def test_a_bad_params_yaml_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text().replace("  steps: 100", "  stepz: 100"))
    with pytest.raises(ConfigError, match=r"params\.yaml.*retriever\.stepz"):
        load_params(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: expected a mapping"):
        load_params(path)
    with pytest.raises(ConfigError, match=r"conf/config\.yaml: not found"):
        load_params(path, ["profile=tiny"])


def documented_overrides() -> list[tuple[tuple[str, str], ...]]:
    """Every command line with `-S key=value` in the README and the docs: its overrides,
    which a user gives together (DP, for one, needs the reranker setting beside it)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    lines = "\n".join(p.read_text() for p in pages).splitlines()
    found = [tuple(re.findall(r"-S ([a-z_][\w.]*)=([^\s`)]+)", line)) for line in lines]
    return sorted({f for f in found if f})


@pytest.mark.parametrize("profile", ["default", "tiny", "gpu"])
def test_every_documented_override_takes_effect_under_every_profile(profile):
    examples = [tuple(o for o in line if "." in o[0]) for line in documented_overrides()]
    assert (("retriever.steps", "200"),) in examples  # the README's `dvc exp run` example
    for line in filter(None, examples):
        given = [f"{key}={value}" for key, value in line]
        params = load_params(ROOT / "params.yaml", [f"profile={profile}", *given])
        effective = dict(flatten(params.model_dump(mode="json", by_alias=True)))
        for key, value in line:
            assert effective[key] == yaml.safe_load(value), (profile, key, value)

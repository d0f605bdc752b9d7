"""Repeated (query, product) ratings: each merge policy on a fixture of several raters, and
the default that refuses to pick one rating silently."""

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from shopflow.core.errors import SourceError
from shopflow.data import normalize as contract
from shopflow.data.repeated_judgments import apply_policy, merge_repeated, repeated_stats
from shopflow.data.sources import read_source
from tests.conftest import tiny_params

pytestmark = pytest.mark.data
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
MAPPING = "{query: q, product_id: pid, title: name, relevance: grade}"

# Three raters on ("drill", d1), two on ("drill", d2), one on ("saw", s1), all in file order.
RATINGS = pd.DataFrame(
    {
        "q": ["drill", "drill", "saw", "drill", "drill", "drill"],
        "pid": ["d1", "d2", "s1", "d1", "d2", "d1"],
        "name": [
            "Cordless Drill",
            "Drill Bits",
            "Hand Saw",
            "Cordless Drill",
            "Drill Bits",
            "Cordless Drill",
        ],
        "grade": [3.0, 1.0, 2.0, 1.0, 2.0, 3.0],
    }
)
EXPECTED = {  # policy -> grade of (drill, d1), (drill, d2), (saw, s1)
    "mean": (7 / 3, 1.5, 2.0),
    "median": (3.0, 1.5, 2.0),
    "max": (3.0, 2.0, 2.0),
    "first": (3.0, 1.0, 2.0),
}


def write_ratings(path: Path) -> Path:
    RATINGS.to_csv(path, index=False)
    return path


def judgments(frame: pd.DataFrame = RATINGS) -> pd.DataFrame:
    return frame.rename(columns={"q": "query", "pid": "product_id", "grade": "relevance"}).drop(
        columns="name"
    )


def grades(frame: pd.DataFrame) -> tuple[float, ...]:
    by_pair = frame.set_index(["query", "product_id"])["relevance"]
    return tuple(by_pair[pair] for pair in [("drill", "d1"), ("drill", "d2"), ("saw", "s1")])


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_each_policy_gives_one_grade_per_pair(policy):
    merged = merge_repeated(judgments(), policy)
    assert len(merged) == 3 and not merged.duplicated(["query", "product_id"]).any()
    assert grades(merged) == pytest.approx(EXPECTED[policy])
    assert list(merged["product_id"]) == ["d1", "d2", "s1"]  # order of first appearance


def test_the_merged_pair_keeps_its_raters_disagreement():
    merged = merge_repeated(judgments(), "mean").set_index("product_id")["relevance_variance"]
    assert merged["d1"] == pytest.approx(pd.Series([3.0, 1.0, 3.0]).var(ddof=0))
    assert merged["d2"] == pytest.approx(0.25)
    assert pd.isna(merged["s1"])  # one rating, and the source reports no variance


def test_a_source_variance_column_adds_to_the_spread_between_raters():
    frame = judgments().assign(relevance_variance=[0.5, 0.1, 0.2, 0.3, 0.1, 0.1])
    merged = merge_repeated(frame, "median").set_index("product_id")["relevance_variance"]
    assert merged["d2"] == pytest.approx(0.25 + 0.1)
    assert merged["s1"] == pytest.approx(0.2)  # a single rating keeps its own


def test_fail_leaves_the_ratings_for_validate_and_counts_them():
    frame = judgments()
    assert merge_repeated(frame, "fail") is frame
    stats = repeated_stats(frame, "fail")
    assert stats["repeated_pairs"] == 2 and stats["extra_rows"] == 3
    assert stats["max_ratings_per_pair"] == 3
    assert stats["disagreement_share"] == 1.0
    assert stats["disagreement_over_1_share"] == 0.5  # d1 spans 1..3, d2 only 1..2
    assert stats["max_spread"] == 2.0


def test_an_unknown_policy_is_an_error_naming_the_option_and_the_choices():
    with pytest.raises(
        SourceError, match=r"repeated_judgments: 'average' is not one of fail, mean"
    ):
        apply_policy(judgments(), {"repeated_judgments": "average"})


def test_ingest_merges_by_policy_and_records_it_in_the_manifest(tmp_path):
    path = write_ratings(tmp_path / "ratings.csv")
    params = tiny_params(
        "ingest.source=judgments",
        f"ingest.path={path}",
        f"++ingest.mapping={MAPPING}",
        "++ingest.options={repeated_judgments: median}",
    )
    result = contract.normalize(read_source(params), params, b"k", NOW)
    assert grades(result.tables["judgments"]) == pytest.approx(EXPECTED["median"])
    record = result.manifest["repeated_judgments"]
    assert record["policy"] == "median" and record["repeated_pairs"] == 2


def test_a_rater_variance_column_maps_like_any_other(tmp_path):
    path = tmp_path / "ratings.csv"
    RATINGS.assign(var=[0.5, 0.1, 0.2, 0.3, 0.1, 0.1]).to_csv(path, index=False)
    params = tiny_params(
        "ingest.source=judgments",
        f"ingest.path={path}",
        "++ingest.mapping={query: q, product_id: pid, title: name, relevance: grade, "
        "relevance_variance: var}",
        "++ingest.options={repeated_judgments: first}",
    )
    judged = contract.normalize(read_source(params), params, b"k", NOW).tables["judgments"]
    assert judged.set_index("product_id").loc["s1", "relevance_variance"] == pytest.approx(0.2)

"""The test split both systems of an A/B evaluation answer: judged queries (search) and
held-out purchases with the shopper's history (recommendation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.data.tables import lowest_grade, split_of
from shopflow.evaluation.offline import test_qrels


@dataclass
class HeldOut:
    products: pd.DataFrame
    qrels: dict[str, dict[str, float]]
    histories: list[list[str]]
    targets: list[str]
    exclude: list[list[str]] | None
    popular: pd.Series
    lowest: float = 0.0  # the judgments' lowest grade: gain 0 in the judged-only protocol

    @property
    def queries(self) -> list[str]:
        return list(self.qrels)


def held_out(tables: dict[str, pd.DataFrame], params: Params, baselines_dir: Path) -> HeldOut:
    qrels = test_qrels(tables)
    test = split_of(tables, "sequences", "test")
    histories, targets = [], []
    if test is not None:
        histories = [list(h) for h in test["history"]]
        targets = test["product_id"].tolist()
    if not qrels and not targets:
        raise StageInputError(
            "the test split has neither judged queries nor held-out purchases: nothing to "
            "evaluate a challenger on (check prepare.test_days and the source's judgments)"
        )
    popular_path = baselines_dir / "popularity.parquet"
    if not popular_path.exists():
        raise StageInputError(f"{popular_path}: missing; run the baselines stage first")
    popular = pd.read_parquet(popular_path).set_index("product_id")["score"]
    exclude = histories if params.evaluation.exclude_history else None
    return HeldOut(
        tables["products"], qrels, histories, targets, exclude, popular, lowest_grade(tables)
    )

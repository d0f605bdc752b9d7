"""The test split both systems of an A/B evaluation answer: judged queries (search) and
held-out purchases of known customers (recommendation, `evaluation.recommend`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.data.tables import lowest_grade
from shopflow.evaluation.offline import test_qrels
from shopflow.evaluation.recommend import RecommendTask, split_starts, task_of


@dataclass
class HeldOut:
    products: pd.DataFrame
    qrels: dict[str, dict[str, float]]
    purchases: RecommendTask | None  # the test split's purchases of known customers
    interactions: pd.DataFrame | None  # what the recommenders are fitted on (before the split)
    popular: pd.Series
    lowest: float = 0.0  # the judgments' lowest grade: gain 0 in the judged-only protocol

    @property
    def queries(self) -> list[str]:
        return list(self.qrels)


def held_out(tables: dict[str, pd.DataFrame], params: Params, baselines_dir: Path) -> HeldOut:
    qrels = test_qrels(tables)
    acts = tables.get("interactions")
    purchases = None if acts is None else task_of(acts, split_starts(), "test")
    if not qrels and purchases is None:
        raise StageInputError(
            "the test split has neither judged queries nor held-out purchases: nothing to "
            "evaluate a challenger on (check prepare.test_days and the source's judgments)"
        )
    popular_path = baselines_dir / "popularity.parquet"
    if not popular_path.exists():
        raise StageInputError(f"{popular_path}: missing; run the baselines stage first")
    popular = pd.read_parquet(popular_path).set_index("product_id")["score"]
    return HeldOut(tables["products"], qrels, purchases, acts, popular, lowest_grade(tables))

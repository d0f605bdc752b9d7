"""The two windows a drift check compares: behaviour rows, CTR counts and a text sample.

The reference is the window the champion was trained on. A promoted model carries it inside
its bundle (`drift_reference/`: the behaviour rows of its training days, sampled; its CTR per
position; its vocabulary and price levels), so the check works however old the champion is.
Before the first promotion the reference is tonight's own training days.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shopflow.core.artifacts import read_json, write_json, write_parquet
from shopflow.core.config import DriftCheckConfig, Params
from shopflow.data.splits import training_days
from shopflow.monitoring import features as behaviour

REFERENCE = "drift_reference"  # the folder name inside a model bundle


@dataclass
class Window:
    """One side of the comparison: behaviour rows, CTR counts and the text sample."""

    label: str
    days: list[dt.date]
    rows: pd.DataFrame
    ctr: pd.DataFrame
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    scores: np.ndarray | None = None

    @property
    def queries(self) -> pd.Series:
        return self.rows.loc[self.rows["kind"] == "search", "query"]

    @property
    def items(self) -> pd.Series:
        """Titles of the products clicked or bought (one per interaction)."""
        return self.rows.loc[self.rows["kind"].isin(behaviour.INTERACTIONS), "item"]

    def span(self) -> str:
        return f"{min(self.days)}..{max(self.days)}" if self.days else "(no days)"


def observe(
    label: str,
    events: pd.DataFrame,
    products: pd.DataFrame,
    days: Sequence[dt.date],
    norms: behaviour.Norms,
    cfg: DriftCheckConfig,
    seed: int = 0,
) -> Window:
    """The behaviour of `events` on `days`, rows sampled to `max_reference_rows` per kind."""
    wanted = set(days)
    in_window = events[events["ts"].dt.tz_convert("UTC").dt.date.isin(wanted)]
    rows = behaviour.feature_rows(in_window, products, norms, cfg.new_product_days)
    rows = sample_per_kind(rows, cfg.max_reference_rows, seed)
    return Window(label, sorted(wanted), rows, behaviour.position_ctr(in_window, cfg.ctr_positions))


def sample_per_kind(rows: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    parts = [
        part.sample(limit, random_state=seed) if len(part) > limit else part
        for _, part in rows.groupby("kind", sort=True)
    ]
    return pd.concat(parts, ignore_index=True) if parts else rows


@dataclass
class Reference:
    """Where the reference came from, and what it holds."""

    window: Window
    norms: behaviour.Norms
    source: str
    extra: dict = field(default_factory=dict)


def save_reference(reference: Reference, folder: Path) -> None:
    write_parquet(reference.window.rows, folder / "rows.parquet")
    write_parquet(reference.window.ctr.reset_index(names="rate"), folder / "ctr.parquet")
    write_json(folder / "norms.json", reference.norms.to_json())
    write_json(folder / "window.json", {"days": [str(d) for d in reference.window.days]})


def load_reference(folder: Path, source: str) -> Reference:
    """A reference saved by `save_reference` (in a model bundle)."""
    days = [dt.date.fromisoformat(d) for d in read_json(folder / "window.json")["days"]]
    ctr = pd.read_parquet(folder / "ctr.parquet").set_index("rate")
    ctr.index.name = None
    window = Window("reference", days, pd.read_parquet(folder / "rows.parquet"), ctr)
    return Reference(window, behaviour.Norms.from_json(read_json(folder / "norms.json")), source)


def tonight_reference(events: pd.DataFrame, products: pd.DataFrame, params: Params) -> Reference:
    """Tonight's training days: the challenger's reference, and the baseline champion's."""
    cfg, days = params.drift, training_days(params)
    in_days = events[events["ts"].dt.tz_convert("UTC").dt.date.isin(set(days))]
    found = behaviour.searches(behaviour.with_day(in_days))
    norms = behaviour.Norms.of(products, found)
    window = observe("reference", events, products, days, norms, cfg, params.seed)
    return Reference(window, norms, "tonight's training days")

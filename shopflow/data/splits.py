"""Leakage-free splits: events by time, judgments by query.

- Events split by time: the last `prepare.test_days` are test, the `valid_days` before are
  valid, the rest train. Every example takes its split from its own timestamp, so no later
  timestamp crosses into an earlier split.
- Judgments split by query: a hash of the normalized query picks the split, so a query (and
  every product judged for it) sits in exactly one split, stable across runs and data growth.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import ConfigError
from shopflow.data.contract import normalize_text

SPLITS = ("train", "valid", "test")


def time_boundaries(params: Params) -> dict[str, pd.Timestamp]:
    """Start of valid and of test (UTC midnights); train is everything before valid."""
    window = params.ingest.window
    cfg = params.prepare
    if cfg.test_days + cfg.valid_days >= window.days:
        raise ConfigError(
            f"prepare.test_days ({cfg.test_days}) + prepare.valid_days ({cfg.valid_days}) must "
            f"leave training days in the {window.days}-day window"
        )
    _, end = window.bounds()
    test_start = pd.Timestamp(end) - pd.Timedelta(days=cfg.test_days)
    return {"valid": test_start - pd.Timedelta(days=cfg.valid_days), "test": test_start}


def split_by_time(ts: pd.Series, bounds: dict[str, pd.Timestamp]) -> pd.Series:
    split = np.where(
        ts >= bounds["test"], "test", np.where(ts >= bounds["valid"], "valid", "train")
    )
    return pd.Series(split, index=ts.index, dtype="object")


def query_bucket(query: str) -> float:
    """A uniform number in [0, 1) from the normalized query: the same query, the same split."""
    digest = hashlib.sha1(normalize_text(query).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_judgments(judgments: pd.DataFrame, params: Params) -> pd.DataFrame:
    cfg = params.prepare
    buckets = judgments["query"].map(query_bucket)
    split = np.where(
        buckets < cfg.judgments_test_share,
        "test",
        np.where(buckets < cfg.judgments_test_share + cfg.judgments_valid_share, "valid", "train"),
    )
    return judgments.assign(split=split)


def training_days(params: Params) -> list[dt.date]:
    """The days of the window that fall in the train split (a model's training window)."""
    valid = time_boundaries(params)["valid"].date()
    return [d for d in params.ingest.window.dates() if d < valid]

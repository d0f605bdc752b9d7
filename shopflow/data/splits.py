"""Leakage-free splits: events by time, judgments by query.

- Events split by time: the last `prepare.test_days` are test, the `valid_days` before are
  valid, the rest train; with `prepare.train_days`, only that many days before valid are
  train and earlier ones `history` (what the shop knows of its customers, not trained on).
  Every example takes its split from its own timestamp, so no later timestamp crosses into an
  earlier split.
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
HISTORY = "history"  # events before the training window: profiles and counts, no training


def time_boundaries(params: Params) -> dict[str, pd.Timestamp]:
    """Start of valid and of test (UTC midnights), and of train when `prepare.train_days`
    leaves earlier days of the window to history; else train is everything before valid."""
    window = params.ingest.window
    cfg = params.prepare
    if cfg.test_days + cfg.valid_days >= window.days:
        raise ConfigError(
            f"prepare.test_days ({cfg.test_days}) + prepare.valid_days ({cfg.valid_days}) must "
            f"leave training days in the {window.days}-day window"
        )
    _, end = window.bounds()
    test_start = pd.Timestamp(end) - pd.Timedelta(days=cfg.test_days)
    bounds = {"valid": test_start - pd.Timedelta(days=cfg.valid_days), "test": test_start}
    if cfg.train_days is not None:
        train_start = bounds["valid"] - pd.Timedelta(days=cfg.train_days)
        if train_start > pd.Timestamp(window.bounds()[0]):
            bounds["train"] = train_start
    return bounds


def split_by_time(ts: pd.Series, bounds: dict[str, pd.Timestamp]) -> pd.Series:
    """train / valid / test by time; `history` before the training window, if it starts."""
    split = np.where(
        ts >= bounds["test"], "test", np.where(ts >= bounds["valid"], "valid", "train")
    )
    if "train" in bounds:
        split = np.where(ts < bounds["train"], HISTORY, split)
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
    bounds = time_boundaries(params)
    valid = bounds["valid"].date()
    first = bounds["train"].date() if "train" in bounds else params.ingest.window.start
    return [d for d in params.ingest.window.dates() if first <= d < valid]

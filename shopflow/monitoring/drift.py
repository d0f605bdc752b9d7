"""The drift check: has the shop changed since the champion was trained? retrain, alert or not.

Reference = the window the champion was trained on. A promoted model carries its reference
in its bundle (`drift_reference/`: the behaviour rows of its training days, sampled, its CTR
per position, its vocabulary and price levels), so the check works however old the champion
is. Before the first promotion the champion is the baseline rebuilt nightly, so the reference
is tonight's own training days. Current = the last `drift.current_days` days of the window.

Compared (Evidently 0.7, one explicit method and threshold per feature):
- behaviour (`behaviour.feature_rows`): query length in characters and words, the query
  words' out-of-vocabulary share, queries without a click, the first click's position, the
  top-category mix and log price of clicks and of purchases, the share of interactions on
  products launched in the last `new_product_days`, basket size;
- text: the champion's embeddings of a sample of each window's queries and of the titles of
  the products clicked or bought, with Evidently's domain-classifier method (ROC AUC of
  telling the two windows apart);
- prediction: the champion's score of its top answer to those sampled queries;
- target: CTR overall and at positions 1..`ctr_positions` (Cohen's h, statsmodels).

Noise control. Every threshold is on an effect size (normed Wasserstein distance,
Jensen-Shannon distance, Cohen's h, ROC AUC), which does not shrink towards zero as days get
bigger the way p-values do; a feature with fewer than `min_rows` current values is reported
as insufficient data and decides nothing; a drift that already triggered a retrain in the
last `cooldown_days` does not trigger another unless a feature's score grew by
`cooldown_growth` or a new feature drifted (`history`, outside the workspace like the
registry; tonight's own entry is replaced on a rerun, so a rerun decides the same).

Decision: `alert` when the change looks like a broken data pipeline (a feature with values
in the reference has none tonight, CTR fell by `alerts.ctr_drop`, or `alerts.drift_share` of
the features, and at least `alerts.min_drifted`, moved at once); otherwise `retrain` when
any feature drifted (after cool-down); `insufficient_data` when no feature had enough data;
else `none`.

Writes `reports/drift.json` (every feature: method, score, threshold, drifted; the decision
and its reasons), `reports/drift/` (a summary page and Evidently's HTML reports),
`metrics/drift.json`, and `data/drift/reference/`: tonight's training window as the
reference the challenger takes with it if promoted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from shopflow.core.config import DriftCheckConfig
from shopflow.monitoring import features as behaviour
from shopflow.monitoring.reference import Window

EMBEDDINGS = {"query_embedding": "queries", "item_embedding": "products clicked or bought"}
SCORE = "champion_score"

Decision = Literal["none", "retrain", "alert", "insufficient_data"]
Status = Literal["measured", "insufficient_data", "not_applicable", "vanished"]


@dataclass
class FeatureDrift:
    name: str
    group: Literal["behaviour", "text", "prediction", "target"]
    method: str
    threshold: float
    status: Status
    score: float | None = None
    drifted: bool = False
    n_reference: int = 0
    n_current: int = 0
    reference_value: float | None = None
    current_value: float | None = None


METHODS = {"numeric": "wasserstein", "categorical": "jensenshannon"}


def _summary(values: pd.Series, numeric: bool) -> float | None:
    if values.empty:
        return None
    if numeric:
        return float(values.mean())
    return float(values.value_counts(normalize=True).iloc[0])


def tabular_columns(reference: Window, current: Window) -> dict[str, str]:
    """Feature → numeric | categorical, for the behaviour columns plus the champion score."""
    columns = dict.fromkeys(behaviour.NUMERIC, "numeric")
    columns.update(dict.fromkeys(behaviour.CATEGORICAL, "categorical"))
    if reference.scores is not None and current.scores is not None:
        columns[SCORE] = "numeric"
    return columns


def tabular_frame(window: Window, columns: dict[str, str]) -> pd.DataFrame:
    """The behaviour rows, plus one row per scored query carrying the champion's score."""
    frame = window.rows[[c for c in columns if c != SCORE]].copy()
    if SCORE in columns:
        scored = pd.DataFrame({SCORE: np.asarray(window.scores, np.float64)})
        frame = pd.concat([frame, scored], ignore_index=True)
    for column, kind in columns.items():
        if kind == "categorical":
            frame[column] = frame[column].astype(object)
    return frame


def evidently_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: dict[str, str],
    measured: list[str],
    cfg: DriftCheckConfig,
):
    """Evidently's data drift preset over the measurable columns, each with its method and
    effect-size threshold stated explicitly (no size-dependent defaults)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[c for c in measured if columns[c] == "numeric"],
        categorical_columns=[c for c in measured if columns[c] == "categorical"],
    )
    thresholds = column_thresholds(columns, cfg)
    preset = DataDriftPreset(
        columns=measured,
        per_column_method={c: METHODS[columns[c]] for c in measured},
        per_column_threshold={c: thresholds[c] for c in measured},
        drift_share=cfg.alerts.drift_share,
    )
    return Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(current[measured], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[measured], data_definition=definition),
    )


def column_thresholds(columns: dict[str, str], cfg: DriftCheckConfig) -> dict[str, float]:
    by_kind = {"numeric": cfg.thresholds.numeric, "categorical": cfg.thresholds.categorical}
    out = {column: by_kind[kind] for column, kind in columns.items()}
    if SCORE in out:
        out[SCORE] = cfg.thresholds.prediction
    return out


def value_drift_scores(snapshot) -> dict[str, float]:
    """Column → score of each ValueDrift metric in an Evidently snapshot."""
    scores = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith(":ValueDrift"):
            scores[config["column"]] = float(metric["value"])
    return scores


def measure_tabular(
    reference: Window, current: Window, cfg: DriftCheckConfig
) -> tuple[list[FeatureDrift], object | None]:
    """Behaviour and prediction features through one Evidently report."""
    columns = tabular_columns(reference, current)
    ref, cur = tabular_frame(reference, columns), tabular_frame(current, columns)
    thresholds = column_thresholds(columns, cfg)
    features, measured = [], []
    for column, kind in columns.items():
        ref_values, cur_values = ref[column].dropna(), cur[column].dropna()
        feature = FeatureDrift(
            name=column,
            group="prediction" if column == SCORE else "behaviour",
            method=METHODS[kind],
            threshold=thresholds[column],
            status="measured",
            n_reference=len(ref_values),
            n_current=len(cur_values),
            reference_value=_summary(ref_values, kind == "numeric"),
            current_value=_summary(cur_values, kind == "numeric"),
        )
        needed = min(cfg.min_rows, cfg.text_sample) if column == SCORE else cfg.min_rows
        feature.status = availability(feature.n_reference, feature.n_current, needed)
        if kind == "categorical" and feature.status == "measured":
            top = ref_values.value_counts().index[0]
            feature.current_value = float((cur_values == top).mean())
        if feature.status == "measured":
            measured.append(column)
        features.append(feature)
    if not measured:
        return features, None
    snapshot = evidently_report(ref, cur, columns, measured, cfg)
    scores = value_drift_scores(snapshot)
    for feature in features:
        if feature.name in scores:
            # Evidently adds a categorical feature's categories in an order that follows
            # Python's string hashing, so a score's last bits differ from process to process:
            # 10 decimals keep every report the same and are far below any threshold.
            feature.score = round(scores[feature.name], 10)
            feature.drifted = feature.score >= feature.threshold
    return features, snapshot


def availability(n_reference: int, n_current: int, min_rows: int) -> Status:
    if n_reference == 0:
        return "not_applicable"
    if n_current == 0:
        return "vanished"
    if n_reference < min_rows or n_current < min_rows:
        return "insufficient_data"
    return "measured"


def measure_embeddings(
    name: str, reference: Window, current: Window, cfg: DriftCheckConfig
) -> tuple[FeatureDrift, object | None]:
    """Embedding drift: Evidently's domain-classifier method (ROC AUC of telling the two
    windows' texts apart; 0.5 = indistinguishable), run once as an Evidently report whose
    value decides and whose snapshot is the page (with its t-SNE picture)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import ModelDriftMethod

    threshold = cfg.thresholds.embedding
    feature = FeatureDrift(name, "text", "domain classifier ROC AUC", threshold, "not_applicable")
    ref, cur = reference.embeddings.get(name), current.embeddings.get(name)
    feature.n_reference = 0 if ref is None else len(ref)
    feature.n_current = 0 if cur is None else len(cur)
    feature.status = availability(
        feature.n_reference, feature.n_current, min(cfg.min_rows, cfg.text_sample)
    )
    if feature.status != "measured" or ref is None or cur is None:
        return feature, None
    columns = [f"e{i}" for i in range(ref.shape[1])]
    definition = DataDefinition(numerical_columns=[], embeddings={name: columns})
    method = ModelDriftMethod(threshold=threshold)
    snapshot = Report([EmbeddingsDrift(embeddings_name=name, drift_method=method)]).run(
        current_data=Dataset.from_pandas(pd.DataFrame(cur, columns=columns), definition),
        reference_data=Dataset.from_pandas(pd.DataFrame(ref, columns=columns), definition),
    )
    (metric,) = snapshot.dict()["metrics"]
    feature.score = float(metric["value"])
    feature.drifted = feature.score >= threshold
    return feature, snapshot


def measure_ctr(reference: Window, current: Window, cfg: DriftCheckConfig) -> list[FeatureDrift]:
    """CTR overall and per position: Cohen's h of the two rates (an effect size)."""
    from statsmodels.stats.proportion import proportion_effectsize

    features = []
    for name in reference.ctr.index:
        ref_n = int(reference.ctr.at[name, "impressions"])
        cur_n = int(current.ctr.at[name, "impressions"]) if name in current.ctr.index else 0
        feature = FeatureDrift(
            name,
            "target",
            "cohen_h",
            cfg.thresholds.proportion,
            availability(ref_n, cur_n, cfg.min_rows),
            n_reference=ref_n,
            n_current=cur_n,
        )
        if ref_n:
            feature.reference_value = reference.ctr.at[name, "clicks"] / ref_n
        if cur_n:
            feature.current_value = current.ctr.at[name, "clicks"] / cur_n
        if feature.status == "measured":
            h = proportion_effectsize(feature.current_value, feature.reference_value)
            feature.score = float(abs(h))
            feature.drifted = feature.score >= feature.threshold
        features.append(feature)
    return features


def measure(
    reference: Window, current: Window, cfg: DriftCheckConfig
) -> tuple[list[FeatureDrift], dict[str, object]]:
    """Every feature's drift, and the Evidently snapshots that measured them (for their
    HTML): `tabular` (behaviour and prediction) and one per measured embedding."""
    features, tabular = measure_tabular(reference, current, cfg)
    snapshots = {"tabular": tabular} if tabular is not None else {}
    for name in EMBEDDINGS:
        feature, snapshot = measure_embeddings(name, reference, current, cfg)
        features.append(feature)
        if snapshot is not None:
            snapshots[name] = snapshot
    features.extend(measure_ctr(reference, current, cfg))
    return features, snapshots


# -- deciding --------------------------------------------------------------------------


@dataclass
class Verdict:
    decision: Decision
    reasons: list[str]
    drifted: dict[str, float]
    drift_share: float
    cooldown: dict | None = None
    measured: int = 0


def decide(
    features: Sequence[FeatureDrift],
    cfg: DriftCheckConfig,
    past: Sequence[dict] = (),
    today: dt.date | None = None,
) -> Verdict:
    """The decision from the measured features and past nights (see the module docstring)."""
    measured = [f for f in features if f.status == "measured"]
    drifted = {
        f.name: round(float(f.score), 6) for f in measured if f.drifted and f.score is not None
    }
    share = len(drifted) / len(measured) if measured else 0.0
    vanished = [f.name for f in features if f.status == "vanished"]
    alerts = [f"{name}: values in the reference, none in the current window" for name in vanished]
    ctr = next((f for f in measured if f.name == "ctr"), None)
    if ctr is not None and ctr.reference_value and ctr.current_value is not None:
        change = ctr.current_value / ctr.reference_value - 1
        if change <= -cfg.alerts.ctr_drop:
            alerts.append(
                f"ctr fell {-change:.0%} ({ctr.reference_value:.4f} → {ctr.current_value:.4f}), "
                f"over alerts.ctr_drop={cfg.alerts.ctr_drop:.0%}: is click logging broken?"
            )
    if share >= cfg.alerts.drift_share and len(drifted) >= cfg.alerts.min_drifted:
        alerts.append(
            f"{len(drifted)}/{len(measured)} features drifted at once (share {share:.2f} ≥ "
            f"alerts.drift_share={cfg.alerts.drift_share}): suspect the data pipeline"
        )
    if alerts:
        return Verdict("alert", alerts, drifted, share, measured=len(measured))
    if not measured:
        short = [f.name for f in features if f.status == "insufficient_data"]
        return Verdict(
            "insufficient_data",
            [
                f"no feature has {cfg.min_rows} values in both windows (drift.min_rows); too few: "
                f"{', '.join(short) or 'all'}"
            ],
            {},
            0.0,
        )
    if not drifted:
        return Verdict(
            "none",
            [f"no drift in {len(measured)} measured features"],
            {},
            share,
            measured=len(measured),
        )
    reasons = [
        f"{f.name} drifted: {f.method} {f.score:.3f} ≥ {f.threshold}" for f in measured if f.drifted
    ]
    earlier = cooled_down(drifted, past, today, cfg)
    if earlier is not None:
        reasons.append(
            f"cool-down: the same drift triggered retraining on {earlier['date']} (within "
            f"{cfg.cooldown_days} days) and no score grew {cfg.cooldown_growth}x since"
        )
        return Verdict("none", reasons, drifted, share, cooldown=earlier, measured=len(measured))
    return Verdict("retrain", reasons, drifted, share, measured=len(measured))


def cooled_down(
    drifted: dict[str, float], past: Sequence[dict], today: dt.date | None, cfg: DriftCheckConfig
) -> dict | None:
    """The latest retrain decision within `cooldown_days` whose drift covers tonight's (same
    features, no score grown by `cooldown_growth`), if any."""
    if today is None or cfg.cooldown_days == 0:
        return None
    since = today - dt.timedelta(days=cfg.cooldown_days)
    for entry in sorted(past, key=lambda e: e["date"], reverse=True):
        day = dt.date.fromisoformat(entry["date"])
        if not since <= day < today or entry["decision"] != "retrain":
            continue
        before = entry.get("drifted", {})
        if all(
            name in before and score <= cfg.cooldown_growth * before[name]
            for name, score in drifted.items()
        ):
            return entry
        return None  # the latest retrain saw a different drift: this one is new
    return None


def headline(result: dict) -> dict:
    return {
        "decision": result["decision"],
        "drift_share": result["dataset_drift_share"],
        "drifted": len(result["drifted"]),
        "measured": sum(f["status"] == "measured" for f in result["features"]),
    }

"""Stage `drift`: has the shop changed since the champion was trained? retrain, alert or not.

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
import html
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipelines import behaviour
from pipelines.artifacts import read_json, staged_dir, write_json, write_parquet
from pipelines.config import DriftCheckConfig, Params
from pipelines.errors import StageInputError
from pipelines.registry import Registry, champion_bundle

log = logging.getLogger(__name__)

IN_DIR = Path("data/validated")
OUT_DIR = Path("data/drift")
REPORT = Path("reports/drift.json")
HTML_DIR = Path("reports/drift")
METRICS = Path("metrics/drift.json")
REFERENCE = "drift_reference"  # the folder name inside a model bundle
EMBEDDINGS = {"query_embedding": "queries", "item_embedding": "products clicked or bought"}
SCORE = "champion_score"

Decision = Literal["none", "retrain", "alert", "insufficient_data"]
Status = Literal["measured", "insufficient_data", "not_applicable", "vanished"]


# -- windows ---------------------------------------------------------------------------


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
    label: str, events: pd.DataFrame, products: pd.DataFrame, days: Sequence[dt.date],
    norms: behaviour.Norms, cfg: DriftCheckConfig, seed: int = 0,
) -> Window:  # fmt: skip
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


def text_sample(texts: pd.Series, size: int, seed: int) -> list[str]:
    """Texts as they occurred, sampled by traffic (a frequent query is drawn often)."""
    texts = texts.dropna().astype(str)
    if len(texts) > size:
        texts = texts.sample(size, random_state=seed)
    return texts.tolist()


# -- the champion as a probe -----------------------------------------------------------


@dataclass
class Probe:
    """What the champion makes of a window: its embeddings of the queries and of the products
    shoppers chose, and the score of its top answer to the queries."""

    name: str
    embed_queries: Callable[[Sequence[str]], np.ndarray]
    embed_items: Callable[[Sequence[str]], np.ndarray]
    top_score: Callable[[Sequence[str]], np.ndarray]

    def apply(self, window: Window, size: int, seed: int) -> None:
        queries = text_sample(window.queries, size, seed)
        if queries:
            window.embeddings["query_embedding"] = self.embed_queries(queries)
            window.scores = self.top_score(queries)
        items = text_sample(window.items, size, seed)
        if items:
            window.embeddings["item_embedding"] = self.embed_items(items)


def model_probe(bundle: Path, device: str = "cpu") -> Probe:
    """A promoted model over its own catalogue: the query tower, and the reranker's score of
    the retriever's first hit (the retriever's score when it has no reranker)."""
    from pipelines.engine import SearchEngine

    engine = SearchEngine.load(bundle, device)

    def top_score(queries: Sequence[str]) -> np.ndarray:
        found = engine.candidates_for(list(queries), k=1)
        hits = engine.rerank(list(queries), found, k=1, limit=1)
        return np.array([h[0].score if h else np.nan for h in hits], np.float64)

    def embed_items(titles: Sequence[str]) -> np.ndarray:
        return engine.retriever.encode(list(titles))

    return Probe(f"model {bundle.name}", engine.embed_queries, embed_items, top_score)


def base_encoder(params: Params):
    from pipelines.encoders import resolve_base_model
    from pipelines.encoding import Retriever

    return Retriever.load(resolve_base_model(params.models.base, params.models.allow_download))


def baseline_probe(params: Params, products: pd.DataFrame, encoder=None) -> Probe:
    """The baseline champion: BM25's top score, and the base encoder's embeddings (the
    baseline has none; the base encoder is what every model starts from)."""
    from pipelines.baselines import BM25
    from pipelines.features import product_text

    bm25 = BM25(products["product_id"], product_text(products))
    encoder = encoder or base_encoder(params)

    def top_score(queries: Sequence[str]) -> np.ndarray:
        hits = bm25.search(list(queries), k=1)
        return np.array([h[0][1] if h else 0.0 for h in hits], np.float64)

    def embed_queries(queries: Sequence[str]) -> np.ndarray:
        return encoder.encode(list(queries), max_len=params.retriever.max_query_len)

    def embed_items(titles: Sequence[str]) -> np.ndarray:
        return encoder.encode(list(titles), max_len=params.retriever.max_item_len)

    return Probe(f"baseline (BM25; {params.models.base} embeddings)", embed_queries,
                 embed_items, top_score)  # fmt: skip


# -- measuring -------------------------------------------------------------------------


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
    reference: pd.DataFrame, current: pd.DataFrame, columns: dict[str, str],
    measured: list[str], cfg: DriftCheckConfig,
):  # fmt: skip
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
            name=column, group="prediction" if column == SCORE else "behaviour",
            method=METHODS[kind], threshold=thresholds[column], status="measured",
            n_reference=len(ref_values), n_current=len(cur_values),
            reference_value=_summary(ref_values, kind == "numeric"),
            current_value=_summary(cur_values, kind == "numeric"),
        )  # fmt: skip
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
            feature.score = scores[feature.name]
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
) -> FeatureDrift:
    """Embedding drift: Evidently's domain-classifier method (ROC AUC of telling the two
    windows' texts apart; 0.5 = indistinguishable)."""
    from evidently.metrics.embeddings import ModelDriftMethod

    threshold = cfg.thresholds.embedding
    feature = FeatureDrift(name, "text", "domain classifier ROC AUC", threshold,
                           "not_applicable")  # fmt: skip
    ref, cur = reference.embeddings.get(name), current.embeddings.get(name)
    feature.n_reference = 0 if ref is None else len(ref)
    feature.n_current = 0 if cur is None else len(cur)
    feature.status = availability(
        feature.n_reference, feature.n_current, min(cfg.min_rows, cfg.text_sample)
    )
    if feature.status != "measured":
        return feature
    columns = [f"e{i}" for i in range(ref.shape[1])]
    score, _, _ = ModelDriftMethod(threshold=threshold)(
        pd.DataFrame(cur, columns=columns), pd.DataFrame(ref, columns=columns)
    )
    feature.score = float(score)
    feature.drifted = feature.score >= threshold
    return feature


def measure_ctr(reference: Window, current: Window, cfg: DriftCheckConfig) -> list[FeatureDrift]:
    """CTR overall and per position: Cohen's h of the two rates (an effect size)."""
    from statsmodels.stats.proportion import proportion_effectsize

    features = []
    for name in reference.ctr.index:
        ref_n = int(reference.ctr.at[name, "impressions"])
        cur_n = int(current.ctr.at[name, "impressions"]) if name in current.ctr.index else 0
        feature = FeatureDrift(name, "target", "cohen_h", cfg.thresholds.proportion,
                               availability(ref_n, cur_n, cfg.min_rows),
                               n_reference=ref_n, n_current=cur_n)  # fmt: skip
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
) -> tuple[list[FeatureDrift], object | None]:
    """Every feature's drift; the Evidently snapshot of the tabular part (for its HTML)."""
    features, snapshot = measure_tabular(reference, current, cfg)
    features.extend(measure_embeddings(name, reference, current, cfg) for name in EMBEDDINGS)
    features.extend(measure_ctr(reference, current, cfg))
    return features, snapshot


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
    features: Sequence[FeatureDrift], cfg: DriftCheckConfig, past: Sequence[dict] = (),
    today: dt.date | None = None,
) -> Verdict:  # fmt: skip
    """The decision from the measured features and past nights (see the module docstring)."""
    measured = [f for f in features if f.status == "measured"]
    drifted = {f.name: round(float(f.score), 6) for f in measured if f.drifted}
    share = len(drifted) / len(measured) if measured else 0.0
    vanished = [f.name for f in features if f.status == "vanished"]
    alerts = [f"{name}: values in the reference, none in the current window" for name in vanished]
    ctr = next((f for f in measured if f.name == "ctr"), None)
    if ctr is not None and ctr.reference_value:
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
            [f"no feature has {cfg.min_rows} values in both windows (drift.min_rows); too few: "
             f"{', '.join(short) or 'all'}"],
            {}, 0.0,
        )  # fmt: skip
    if not drifted:
        return Verdict("none", [f"no drift in {len(measured)} measured features"], {}, share,
                       measured=len(measured))  # fmt: skip
    reasons = [
        f"{f.name} drifted: {f.method} {f.score:.3f} ≥ {f.threshold}"
        for f in measured if f.drifted
    ]  # fmt: skip
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
        if all(name in before and score <= cfg.cooldown_growth * before[name]
               for name, score in drifted.items()):  # fmt: skip
            return entry
        return None  # the latest retrain saw a different drift: this one is new
    return None


class History:
    """The drift decisions of past nights, one JSON file (written atomically)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / "history.json"

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        try:
            entries = read_json(self.path)["entries"]
            for entry in entries:
                dt.date.fromisoformat(entry["date"])
                if entry["decision"] not in ("none", "retrain", "alert", "insufficient_data"):
                    raise ValueError(f"unknown decision {entry['decision']!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise StageInputError(
                f"{self.path}: not a shopflow drift history ({exc}); move it away to start over"
            ) from None
        return entries

    def before(self, day: dt.date) -> list[dict]:
        return [e for e in self.entries() if dt.date.fromisoformat(e["date"]) < day]

    def record(self, day: dt.date, verdict: Verdict) -> None:
        """Tonight's entry, replacing an earlier run of the same night."""
        kept = [e for e in self.entries() if e["date"] != day.isoformat()]
        entry = {"date": day.isoformat(), "decision": verdict.decision, "drifted": verdict.drifted}
        write_json(self.path, {"entries": sorted([*kept, entry], key=lambda e: e["date"])})


# -- the stage -------------------------------------------------------------------------


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


def training_days(params: Params) -> list[dt.date]:
    from pipelines.prepare import time_boundaries

    valid = time_boundaries(params)["valid"].date()
    return [d for d in params.ingest.window.dates() if d < valid]


def tonight_reference(events: pd.DataFrame, products: pd.DataFrame, params: Params) -> Reference:
    """Tonight's training days: the challenger's reference, and the baseline champion's."""
    cfg, days = params.drift, training_days(params)
    in_days = events[events["ts"].dt.tz_convert("UTC").dt.date.isin(set(days))]
    found = behaviour.searches(behaviour.with_day(in_days))
    norms = behaviour.Norms.of(products, found)
    window = observe("reference", events, products, days, norms, cfg, params.seed)
    return Reference(window, norms, "tonight's training days")


def run(
    params: Params, in_dir: Path = IN_DIR, out_dir: Path = OUT_DIR, report: Path = REPORT,
    html_dir: Path = HTML_DIR, metrics: Path = METRICS,
) -> dict:  # fmt: skip
    started = time.perf_counter()
    cfg = params.drift
    events_path, products_path = in_dir / "events.parquet", in_dir / "products.parquet"
    for path in (events_path, products_path):
        if not path.exists():
            raise StageInputError(f"{path} is missing: run the validate stage first")
    events, products = pd.read_parquet(events_path), pd.read_parquet(products_path)

    tonight = tonight_reference(events, products, params)
    entry = Registry(params.promote.registry).champion()
    bundle = champion_bundle(entry)
    if bundle is not None and (bundle / REFERENCE / "window.json").exists():
        reference = load_reference(bundle / REFERENCE, f"champion #{entry.id} ({entry.model_tag})")
    else:
        reference = tonight
        if bundle is not None:
            log.warning("the champion %s has no drift reference (saved before the drift stage "
                        "existed): using tonight's training days", entry.model_tag)  # fmt: skip
    current_days = params.ingest.window.dates()[-cfg.current_days :]
    current = observe("current", events, products, current_days, reference.norms, cfg,
                      params.seed)  # fmt: skip
    log.info("drift: reference %s (%s, %d rows) vs current %s (%d rows)",
             reference.window.span(), reference.source, len(reference.window.rows),
             current.span(), len(current.rows))  # fmt: skip

    from pipelines.encoding import device_of

    probe = model_probe(bundle, device_of(params)) if bundle else baseline_probe(params, products)
    for window in (reference.window, current):
        probe.apply(window, cfg.text_sample, params.seed)
    features, snapshot = measure(reference.window, current, cfg)

    history = History(cfg.history)
    today = current_days[-1]
    verdict = decide(features, cfg, history.before(today), today)
    history.record(today, verdict)
    result = {
        "decision": verdict.decision,
        "reasons": verdict.reasons,
        "date": str(today),
        "reference": {
            "source": reference.source,
            "days": reference.window.span(),
            "rows": len(reference.window.rows),
        },
        "current": {"days": current.span(), "rows": len(current.rows)},
        "probe": probe.name,
        "dataset_drift_share": round(verdict.drift_share, 4),
        "drifted": verdict.drifted,
        "cooldown": verdict.cooldown,
        "features": [asdict(f) for f in features],
        "thresholds": cfg.thresholds.model_dump(),
        "report": str(html_dir / "index.html"),
    }
    write_reports(result, snapshot, reference.window, current, html_dir)
    with staged_dir(out_dir) as staging:
        save_reference(tonight, staging / "reference")
        write_parquet(current.rows, staging / "current.parquet")
    write_json(report, result)
    write_json(metrics, headline(result))
    log.info("drift: %s (%d drifted of %d measured; %.1fs) — %s", verdict.decision,
             len(verdict.drifted), verdict.measured, time.perf_counter() - started,
             "; ".join(verdict.reasons))  # fmt: skip
    if verdict.decision == "alert":
        log.warning("drift ALERT: %s", "; ".join(verdict.reasons))
    return result


def headline(result: dict) -> dict:
    return {
        "decision": result["decision"],
        "drift_share": result["dataset_drift_share"],
        "drifted": len(result["drifted"]),
        "measured": sum(f["status"] == "measured" for f in result["features"]),
    }


# -- the HTML --------------------------------------------------------------------------


def write_reports(result: dict, snapshot, reference: Window, current: Window, folder: Path) -> None:
    """A summary page (no scripts, renders offline) linking Evidently's own reports."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    if snapshot is not None:
        snapshot.save_html(str(folder / "evidently.html"))
        links.append(("evidently.html", "Evidently: behaviour and prediction drift"))
    else:
        (folder / "evidently.html").unlink(missing_ok=True)
    for name, what in EMBEDDINGS.items():
        page = f"{name}.html"
        if embeddings_report(name, reference, current, folder / page):
            links.append((page, f"Evidently: embedding drift of the {what}"))
        else:
            (folder / page).unlink(missing_ok=True)
    (folder / "index.html").write_text(summary_page(result, links), encoding="utf-8")


def embeddings_report(name: str, reference: Window, current: Window, path: Path) -> bool:
    """Evidently's embedding drift report (with its t-SNE picture) of two samples."""
    ref, cur = reference.embeddings.get(name), current.embeddings.get(name)
    if ref is None or cur is None or min(len(ref), len(cur)) < 2:
        return False
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import ModelDriftMethod

    columns = [f"e{i}" for i in range(ref.shape[1])]
    definition = DataDefinition(numerical_columns=[], embeddings={name: columns})
    report = Report([EmbeddingsDrift(embeddings_name=name, drift_method=ModelDriftMethod())])
    snapshot = report.run(
        current_data=Dataset.from_pandas(pd.DataFrame(cur, columns=columns), definition),
        reference_data=Dataset.from_pandas(pd.DataFrame(ref, columns=columns), definition),
    )
    snapshot.save_html(str(path))
    return True


COLOURS = {"none": "#1a7f37", "retrain": "#9a6700", "alert": "#cf222e",
           "insufficient_data": "#57606a"}  # fmt: skip


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def summary_page(result: dict, links: list[tuple[str, str]]) -> str:
    esc = html.escape
    rows = []
    for f in result["features"]:
        mark = "drifted" if f["drifted"] else f["status"].replace("_", " ")
        rows.append(
            f"<tr class='{'drifted' if f['drifted'] else ''}'><td>{esc(f['name'])}</td>"
            f"<td>{esc(f['group'])}</td><td>{esc(f['method'])}</td>"
            f"<td>{_number(f['score'])}</td><td>{f['threshold']}</td><td>{esc(mark)}</td>"
            f"<td>{f['n_reference']:,}</td><td>{f['n_current']:,}</td>"
            f"<td>{_number(f['reference_value'])}</td><td>{_number(f['current_value'])}</td></tr>"
        )
    reasons = "".join(f"<li>{esc(r)}</li>" for r in result["reasons"])
    link_items = "".join(f"<li><a href='{esc(h)}'>{esc(t)}</a></li>" for h, t in links)
    colour = COLOURS[result["decision"]]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shopflow drift {esc(result["date"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1f2328; }}
.decision {{ display: inline-block; padding: .4rem 1rem; color: white; background: {colour};
  border-radius: .3rem; font-size: 1.4rem; }}
table {{ border-collapse: collapse; margin-top: 1rem; }}
td, th {{ border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: right; }}
td:first-child, th:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
tr.drifted td {{ background: #fff8c5; font-weight: 600; }}
</style></head><body>
<h1>Drift check for {esc(result["date"])}</h1>
<p>Decision: <span class="decision" id="decision">{esc(result["decision"])}</span></p>
<ul id="reasons">{reasons}</ul>
<p>Reference: {esc(result["reference"]["source"])} ({esc(result["reference"]["days"])},
{result["reference"]["rows"]:,} rows). Current: {esc(result["current"]["days"])}
({result["current"]["rows"]:,} rows). Champion probe: {esc(result["probe"])}.
Share of measured features drifted: {result["dataset_drift_share"]:.2f}.</p>
<table id="features"><thead><tr><th>feature</th><th>group</th><th>method</th><th>score</th>
<th>threshold</th><th>status</th><th>n reference</th><th>n current</th>
<th>reference (mean / top share / rate)</th><th>current</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Details</h2>
<ul id="links">{link_items or "<li>no Evidently report (nothing measured)</li>"}</ul>
</body></html>
"""

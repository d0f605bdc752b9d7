"""Stage `drift`: has the shop changed since the champion was trained? retrain, alert or not.

Reads the validated events and catalogue and the champion (registry + BentoML store); writes
`reports/drift.json` (every feature: method, score, threshold, drifted; the decision and its
reasons), `reports/drift/` (a summary page and Evidently's HTML reports), `metrics/drift.json`
and `data/drift/reference/`: tonight's training window, the reference the challenger takes
with it if promoted. The check itself is `shopflow.monitoring.drift`; the decision never
fails the stage (an `alert` is a decision, which the nightly DAG branches on).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

from shopflow.core import paths
from shopflow.core.artifacts import staged_dir, write_json, write_parquet
from shopflow.core.config import Params
from shopflow.data.tables import read_validated
from shopflow.models.device import device_of
from shopflow.monitoring.drift import decide, headline, measure
from shopflow.monitoring.history import History
from shopflow.monitoring.pages import summary_page, write_reports
from shopflow.monitoring.probes import baseline_probe, model_probe
from shopflow.monitoring.reference import (
    REFERENCE,
    load_reference,
    observe,
    save_reference,
    tonight_reference,
)
from shopflow.release.registry import Registry, champion_bundle

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    started = time.perf_counter()
    cfg = params.drift
    tables, manifest = read_validated()
    if "events" not in tables:
        return not_measured(
            str(params.ingest.window.end),
            f"the source {manifest['source']!r} has no events: the drift check compares "
            "shoppers' behaviour, so there is nothing to measure (judgments alone have no days)",
        )
    events, products = tables["events"], tables["products"]

    tonight = tonight_reference(events, products, params)
    entry = Registry.of(params).champion()
    bundle = champion_bundle(entry)
    if entry is not None and bundle is not None and (bundle / REFERENCE / "window.json").exists():
        reference = load_reference(bundle / REFERENCE, f"champion #{entry.id} ({entry.model_tag})")
    else:
        reference = tonight
        if entry is not None and bundle is not None:
            log.warning(
                "the champion %s has no drift reference (saved before the drift stage "
                "existed): using tonight's training days",
                entry.model_tag,
            )
    current_days = params.ingest.window.dates()[-cfg.current_days :]
    current = observe("current", events, products, current_days, reference.norms, cfg, params.seed)
    log.info(
        "drift: reference %s (%s, %d rows) vs current %s (%d rows)",
        reference.window.span(),
        reference.source,
        len(reference.window.rows),
        current.span(),
        len(current.rows),
    )
    probe = model_probe(bundle, device_of(params)) if bundle else baseline_probe(params, products)
    for window in (reference.window, current):
        probe.apply(window, cfg.text_sample, params.seed)
    features, snapshots = measure(reference.window, current, cfg)

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
        "report": str(paths.DRIFT_PAGES / "index.html"),
    }
    write_reports(result, snapshots, paths.DRIFT_PAGES)
    with staged_dir(paths.DRIFT) as staging:
        save_reference(tonight, staging / paths.DRIFT_REFERENCE.name)
        write_parquet(current.rows, staging / "current.parquet")
    write_json(paths.DRIFT_REPORT, result)
    write_json(paths.metrics("drift"), headline(result))
    log.info(
        "drift: %s (%d drifted of %d measured; %.1fs) — %s",
        verdict.decision,
        len(verdict.drifted),
        verdict.measured,
        time.perf_counter() - started,
        "; ".join(verdict.reasons),
    )
    if verdict.decision == "alert":
        log.warning("drift ALERT: %s", "; ".join(verdict.reasons))
    return result


def not_measured(night: str, reason: str) -> dict:
    """`insufficient_data` with the reason, an empty reference and a summary page: the rest of
    the pipeline runs on (a model saved from this run carries no drift reference)."""
    log.warning("drift: not measured: %s", reason)
    result = {
        "decision": "insufficient_data",
        "reasons": [reason],
        "date": night,
        "reference": {"source": "none", "days": "", "rows": 0},
        "current": {"days": "", "rows": 0},
        "probe": "none",
        "dataset_drift_share": 0.0,
        "drifted": [],
        "cooldown": None,
        "features": [],
        "thresholds": {},
        "report": str(paths.DRIFT_PAGES / "index.html"),
    }
    paths.DRIFT_PAGES.mkdir(parents=True, exist_ok=True)
    for stale in paths.DRIFT_PAGES.glob("*.html"):
        stale.unlink()
    (paths.DRIFT_PAGES / "index.html").write_text(summary_page(result, []), encoding="utf-8")
    with staged_dir(paths.DRIFT) as staging:
        reference = staging / paths.DRIFT_REFERENCE.name
        reference.mkdir()
        write_json(reference / "not_measured.json", {"reason": reason})
    write_json(paths.DRIFT_REPORT, result)
    write_json(paths.metrics("drift"), headline(result))
    return result

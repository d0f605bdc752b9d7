"""`make bench-drift`: how sensitive the drift check is, and how quiet, measured.

Synthetic shop. A champion is trained on `REFERENCE_DAYS` days; the check then runs on each
following day, exactly as the stage does (`drift.observe`, `drift.measure`, `drift.decide`
with the stage's params), with the catalogue (prices, launches) as of each day. Runs:
- no drift, `QUIET_DAYS` days for each of two seeds: the false alarm rate (any decision but
  `none`);
- each injected drift (new category, seasonal mix shift, price change, new query vocabulary)
  at a small and a large magnitude, from the first monitored day on for `DRIFT_DAYS` days:
  the detection rate over those days and the delay (days from the drift's start to the
  first `retrain` or `alert`).
Every day is checked on its own (no cool-down history): the cool-down only silences
detections, it never creates them.

UCI Online Retail (when `../shared/data/online_retail` exists): each week against the 28
days before it (a champion retrained monthly), the weeks flagged and by which features. It
has no queries, clicks or categories: what can move is price, basket size, new products and
what is bought (the embeddings of the bought products' titles).

The champion probe is the baseline's (BM25 scores, the base encoder's embeddings): the bench
measures the check, not a model. Results: stdout and `metrics/bench_drift.json`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import time

import pandas as pd

from shopflow.core import paths
from shopflow.core.config import DriftCheckConfig, Params
from shopflow.data.contract import conform
from shopflow.models.bi_encoder import base_bi_encoder
from shopflow.monitoring import drift
from shopflow.monitoring import features as behaviour
from shopflow.monitoring.probes import baseline_probe
from shopflow.monitoring.reference import observe

log = logging.getLogger(__name__)

RESULT = paths.metrics("bench_drift")
REFERENCE_DAYS = 21
QUIET_DAYS = 28
DRIFT_DAYS = 7
MAGNITUDES = {  # (small, large)
    "new_category": (0.05, 0.2),  # share of queries going to a new top category
    "seasonal_shift": (0.15, 0.5),  # traffic moving toward Garden and Sports
    "price_change": (0.1, 0.3),  # Electronics and Furniture prices up
    "new_vocab": (0.05, 0.2),  # share of queries using words never seen before
}
RETAIL = paths.SHARED_DATA / "online_retail"


def _verdict_row(day: dt.date, features: list[drift.FeatureDrift], verdict: drift.Verdict) -> dict:
    return {
        "day": str(day),
        "decision": verdict.decision,
        "drifted": {f.name: round(f.score, 3) for f in features if f.drifted and f.score},
        "scores": {f.name: round(f.score, 4) for f in features if f.score is not None},
    }


def synthetic_run(
    params: Params,
    seed: int,
    knob: str | None,
    magnitude: float,
    days: int,
    encoder,
    reference_days: int = REFERENCE_DAYS,
) -> list[dict]:
    """Check each of `days` days after the reference; drift (if any) from the first one."""
    from shopflow.data.synthetic.generate import catalogue
    from shopflow.data.synthetic.sessions import simulate_day
    from shopflow.data.synthetic.world import ShopWorld

    cfg: DriftCheckConfig = params.drift
    start = params.synthetic.start_date + dt.timedelta(days=28)
    first = start + dt.timedelta(days=reference_days)
    injected = {"start": first, knob: magnitude} if knob else {}
    synthetic = params.synthetic.model_copy(
        update={"drift": params.synthetic.drift.model_copy(update=injected)}
    )
    world = ShopWorld(synthetic, seed)
    ref_days = [start + dt.timedelta(days=d) for d in range(reference_days)]
    ref_events = pd.concat([simulate_day(world, d).events for d in ref_days])
    ref_products = catalogue(world, ref_days[-1])
    found = behaviour.searches(behaviour.with_day(ref_events))
    norms = behaviour.Norms.of(ref_products, found)
    reference = observe("reference", ref_events, ref_products, ref_days, norms, cfg, seed)
    probe = baseline_probe(params, ref_products, encoder)
    probe.apply(reference, cfg.text_sample, seed)
    rows = []
    for k in range(days):
        day = first + dt.timedelta(days=k)
        current = observe(
            "current",
            simulate_day(world, day).events,
            catalogue(world, day),
            [day],
            norms,
            cfg,
            seed,
        )
        probe.apply(current, cfg.text_sample, seed)
        features, _ = drift.measure(reference, current, cfg)
        rows.append(_verdict_row(day, features, drift.decide(features, cfg)))
    return rows


def summarize_drift(rows: list[dict]) -> dict:
    flagged = [i for i, r in enumerate(rows) if r["decision"] in ("retrain", "alert")]
    features: dict[str, int] = {}
    for r in rows:
        for name in r["drifted"]:
            features[name] = features.get(name, 0) + 1
    return {
        "days": len(rows),
        "detected": len(flagged),
        "detection_rate": round(len(flagged) / len(rows), 3),
        "delay_days": flagged[0] if flagged else None,
        "decisions": [r["decision"] for r in rows],
        "features": dict(sorted(features.items(), key=lambda kv: -kv[1])),
        "median_scores": pd.DataFrame([r["scores"] for r in rows]).median().round(4).to_dict(),
    }


def online_retail_weeks(params: Params, encoder) -> list[dict]:
    """Each week of each Online Retail file against the 28 days before it."""
    from shopflow.data.sources import online_retail

    cfg: DriftCheckConfig = params.drift
    out = []
    for path in sorted(RETAIL.glob("*.parquet")):
        source = params.model_copy(
            update={"ingest": params.ingest.model_copy(update={"path": str(path)})}
        )
        tables = online_retail.read(source).present()
        events = tables["events"].dropna(subset=["ts"])
        products, _ = conform(tables["products"], "products", str(path))  # the contract's columns
        day = events["ts"].dt.tz_convert("UTC").dt.date
        norms = behaviour.Norms.of(products, behaviour.searches(events.iloc[:0]))
        probe = baseline_probe(params, products, encoder)
        week = min(day) + dt.timedelta(days=28 + (7 - min(day).weekday()) % 7)  # a Monday
        while week + dt.timedelta(days=6) <= max(day):
            current_days = [week + dt.timedelta(days=d) for d in range(7)]
            reference_days = [week - dt.timedelta(days=d) for d in range(28, 0, -1)]
            reference = observe(
                "reference", events, products, reference_days, norms, cfg, params.seed
            )
            current = observe("current", events, products, current_days, norms, cfg, params.seed)
            for window in (reference, current):
                probe.apply(window, cfg.text_sample, params.seed)
            features, _ = drift.measure(reference, current, cfg)
            verdict = drift.decide(features, cfg)
            row = _verdict_row(week, features, verdict)
            row["file"] = path.name
            row["purchases"] = int(sum(current.rows["kind"] == "purchase"))
            out.append(row)
            log.info("%s week of %s: %s %s", path.name, week, verdict.decision, row["drifted"])
            week += dt.timedelta(days=7)
    return out


def drift_sensitivity(params: Params, retail: bool = True) -> dict:
    """Run everything in the module docstring; write and print the table."""
    started = time.perf_counter()
    encoder = base_bi_encoder(params.models)
    quiet = []
    for seed in (params.seed, params.seed + 1):
        rows = synthetic_run(params, seed, None, 0.0, QUIET_DAYS, encoder)
        quiet += rows
        log.info("no drift, seed %d: %s", seed, [r["decision"] for r in rows])
    alarms = [r for r in quiet if r["decision"] != "none"]
    result: dict = {
        "machine": platform.machine(),
        "params": params.drift.model_dump(),
        "reference_days": REFERENCE_DAYS,
        "no_drift": {
            "days": len(quiet),
            "false_alarms": len(alarms),
            "false_alarm_rate": round(len(alarms) / len(quiet), 3),
            "alarms": alarms,
        },
        "drifts": {},
    }
    for knob, sizes in MAGNITUDES.items():
        for size, magnitude in zip(("small", "large"), sizes, strict=True):
            rows = synthetic_run(params, params.seed, knob, magnitude, DRIFT_DAYS, encoder)
            summary = {"magnitude": magnitude, **summarize_drift(rows)}
            result["drifts"][f"{knob} {size}"] = summary
            log.info(
                "%s %s (%s): detected %d/%d days, delay %s, features %s",
                knob,
                size,
                magnitude,
                summary["detected"],
                summary["days"],
                summary["delay_days"],
                summary["features"],
            )
    if retail and RETAIL.is_dir():
        result["online_retail"] = online_retail_weeks(params, encoder)
    else:
        result["online_retail"] = f"skipped: {RETAIL} not found"
    result["seconds"] = round(time.perf_counter() - started, 1)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"written to {RESULT} in {result['seconds']:.0f} s")
    return result


def table(result: dict) -> str:
    quiet = result["no_drift"]
    lines = [
        f"no drift: {quiet['false_alarms']}/{quiet['days']} days flagged "
        f"(false alarm rate {quiet['false_alarm_rate']:.1%})",
        "",
        "| drift | magnitude | detected days | delay (days) | features that fired (days) |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["drifts"].items():
        features = ", ".join(f"{k} ({v})" for k, v in row["features"].items()) or "–"
        delay = "never" if row["delay_days"] is None else row["delay_days"]
        lines.append(
            f"| {name} | {row['magnitude']} | {row['detected']}/{row['days']} | "
            f"{delay} | {features} |"
        )
    retail = result["online_retail"]
    if isinstance(retail, list):
        lines += ["", "Online Retail, weeks flagged:"]
        for row in retail:
            if row["decision"] != "none":
                drifted = ", ".join(f"{k} {v}" for k, v in row["drifted"].items())
                lines.append(f"  {row['file']} week of {row['day']}: {row['decision']} ({drifted})")
        lines.append(f"  {sum(r['decision'] != 'none' for r in retail)}/{len(retail)} weeks")
    else:
        lines.append(f"Online Retail: {retail}")
    return "\n".join(lines)

"""The facts of a run's report, gathered from files the stages already write.

The run log (`orchestration.runlog`), the metrics, the validation summary, the drift verdict,
the DVCLive curves, the A/B decision, the registry and the local service's state. Each part
is read under a guard (`Problems`): a part that cannot be read is named on the page and the
rest still renders. `outcome` turns the facts into the run's verdict in one word and one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from shopflow.core import paths
from shopflow.core.artifacts import read_json, with_timings
from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.core.provenance import params_hash
from shopflow.orchestration import runlog
from shopflow.release.registry import Registry

log = logging.getLogger(__name__)

TRAINING_STAGES = ("prepare", "baselines", "pretrain", "retriever", "reranker", "evaluate")
WORKSPACE = "workspace"  # the pseudo-run of a report written with no run log at all
NO_PROMOTION: dict[str, Any] = {"outcome": None, "champion": None, "timeline": [], "service": None}


def read_fact(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def pipeline_stages(project: Path) -> list[str]:
    """The stages of dvc.yaml, in the order they are written (the order they run in)."""
    pipeline = project / "dvc.yaml"
    if not pipeline.is_file():
        raise StageInputError(
            f"no dvc.yaml in {project.resolve()}: run this in the project's folder (the one "
            "with dvc.yaml and params.yaml)"
        )
    return list(yaml.safe_load(pipeline.read_text())["stages"])


def stage_rows(stages: list[str], records: list[dict], run_id: str) -> list[dict]:
    """Per stage: what it did in this run (success / failed / interrupted / not run), its time
    and attempts, and, when it did not run, when its current outputs were made."""
    this, made = runlog.of_run(records, run_id), runlog.last_success(records)
    rows = []
    for stage in stages:
        record = this.get(stage)
        row = {"stage": stage, "status": record["status"] if record else "not run"}
        if record:
            row |= {k: record.get(k) for k in ("seconds", "attempts", "started_at", "exit_code")}
            row["error"] = (record.get("error") or "")[:4000]
        elif stage in made:
            row["outputs_from"] = made[stage]["finished_at"]
        rows.append(row)
    return rows


def data_section(project: Path) -> dict | None:
    """Rows per table, and per day: events by type, products by launch day."""
    import pandas as pd

    manifest = read_fact(project / paths.INGESTED / "manifest.json")
    if manifest is None:
        return None
    if not (project / paths.INGESTED / "events.parquet").exists():  # judgments-only source
        return {**data_facts(manifest), "per_day": {}}
    events = pd.read_parquet(
        project / paths.INGESTED / "events.parquet", columns=["ts", "event_type"]
    )
    days = events["ts"].dt.tz_convert("UTC").dt.date if events["ts"].dt.tz else events["ts"].dt.date
    per_day = pd.crosstab(days, events["event_type"])
    products = pd.read_parquet(
        project / paths.INGESTED / "products.parquet", columns=["first_seen"]
    )
    window = manifest.get("window", {})
    launched = pd.Series(dtype=int)
    if "first_seen" in products and len(products) and window.get("start"):
        seen = pd.to_datetime(products["first_seen"], utc=True, errors="coerce")
        days_seen = seen.dt.strftime("%Y-%m-%d").dropna()  # a source may not know launch days
        launched = days_seen[days_seen >= window["start"]].value_counts()
    per_day["new products"] = [int(launched.get(str(day), 0)) for day in per_day.index]
    return {
        **data_facts(manifest),
        "per_day": {
            str(day): {k: int(v) for k, v in row.items()} for day, row in per_day.iterrows()
        },
    }


def data_facts(manifest: dict) -> dict:
    """What the ingest manifest says about the data, whatever tables the source has."""
    return {
        "source": manifest.get("source"),
        "window": manifest.get("window", {}),
        "tables": {
            n: {"rows": t["rows"], "sha256": t["sha256"]} for n, t in manifest["tables"].items()
        },
        "quarantined_rows": manifest.get("quarantined_rows", 0),
        "privacy": manifest.get("privacy", {}),
        "repeated_judgments": manifest.get("repeated_judgments"),
    }


def training_section(project: Path) -> dict:
    """The training stages' final numbers (metrics/*.json) and which curves exist."""
    out = {}
    for stage in ("pretrain", "retriever", "reranker", "recommender"):
        metrics = read_fact(project / paths.metrics(stage))
        timed = read_fact(project / paths.timings(stage))
        if isinstance(metrics, dict) and isinstance(timed, dict):
            metrics = with_timings(metrics, timed)  # this run's seconds, samples/s, p50s
        curves = sorted(
            str(p.relative_to(project / paths.live(stage)))
            for p in (project / paths.live(stage)).glob("plots/metrics/**/*.tsv")
        )
        out[stage] = {"metrics": metrics, "curves": curves}
    return out


def promotion_section(project: Path, params: Params, promoted_now: bool) -> dict:
    """The registry as a timeline (newest first), the champion, and what is deployed."""
    registry = Registry.of(params, project)
    entries = [dataclasses.asdict(e) for e in registry.history()]
    champion = registry.champion()
    for i, entry in enumerate(entries):
        entry["until"] = entries[i + 1]["at"] if i + 1 < len(entries) else None
    service = read_fact(project / params.deploy.state / "service.json")
    return {
        "outcome": read_fact(project / paths.metrics("promote")) if promoted_now else None,
        "champion": dataclasses.asdict(champion) if champion else None,
        "timeline": entries[::-1],
        "service": service,
    }


def alerts_of(project: Path, run_id: str) -> list[dict]:
    path = project / paths.ALERTS
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            alert = json.loads(line)
        except json.JSONDecodeError:
            continue
        if alert.get("run_id") == run_id:
            found.append(alert)
    return found


class Problems(list):
    """What could not be read. A report is most needed after a night that went wrong, so one
    unreadable part is named on the page instead of failing the whole report."""

    def guard(self, part: str, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except Exception as exc:  # the report must not die with what it reports on
            log.warning("run report: could not read the %s: %s: %s", part, type(exc).__name__, exc)
            self.append(f"{part}: {type(exc).__name__}: {exc}")
            return None


def collect(
    params: Params,
    run_id: str,
    project: Path = Path(),
    night: str | None = None,
    runner: dict | None = None,
) -> dict:
    """Every fact the page shows, as JSON (saved as run.json beside the page). `runner`: see
    `runner_result`."""
    from shopflow.core.provenance import git_revision

    records = runlog.read(project / paths.RUN_LOG)
    stages = stage_rows(pipeline_stages(project), records, run_id)
    ran = {s["stage"] for s in stages if s["status"] == "success"}
    this = [r for r in records if r["run_id"] == run_id]
    problems = Problems()
    promotion = problems.guard("registry", promotion_section, project, params, "promote" in ran)
    decision = read_fact(project / paths.DECISION)
    decision_timed = read_fact(project / paths.timings("evaluate"))
    if isinstance(decision, dict) and isinstance(decision_timed, dict):
        decision = with_timings(decision, decision_timed)  # its latency figures, its time
    validation = read_fact(project / paths.VALIDATION_SUMMARY)
    drift = read_fact(project / paths.DRIFT_REPORT)
    run = {
        "run_id": run_id,
        "night": night or params.ingest.window.end.isoformat(),
        "profile": params.profile,
        "written_at": runlog.now_iso(),
        "started_at": min((r["started_at"] for r in this), default=None),
        "finished_at": max((r["finished_at"] for r in this), default=None),
        "git_revision": git_revision(project),
        "params_hash": params_hash(params.model_dump(mode="json", by_alias=True)),
        "stages": stages,
        "stage_seconds": round(sum(s.get("seconds") or 0 for s in stages), 1),
        "data": problems.guard("ingested data", data_section, project),
        "validation": validation,
        "drift": drift,
        "drift_fresh": "drift" in ran,
        "training": training_section(project),
        "decision": decision,
        "decision_fresh": "evaluate" in ran,
        "promotion": promotion or NO_PROMOTION,
        "online": read_fact(project / paths.ONLINE_DECISION),
        "online_fresh": "online" in ran,
        "alerts": alerts_of(project, run_id),
        "problems": problems,
        "runner": runner,
    }
    run["outcome"] = outcome(run)
    return run


def outcome(run: dict) -> dict:
    """The run's verdict in one word and one line, for the index and the page's banner."""
    stages = {s["stage"]: s for s in run["stages"]}
    for stage in stages.values():
        if stage["status"] in ("failed", "interrupted"):
            first = (stage.get("error") or "").strip().splitlines()
            why = f": {first[0]}" if first else f" (exit code {stage.get('exit_code')})"
            return {"verdict": "failed", "summary": f"{stage['status']} at {stage['stage']}{why}"}
    runner = run.get("runner") or {}
    if runner.get("exit_code"):
        why = runner["errors"][0] if runner.get("errors") else "see its output"
        return {
            "verdict": "failed",
            "summary": f"dvc repro exited with {runner['exit_code']}: {why}",
        }
    failed_tasks = [a for a in run["alerts"] if a.get("task_id") and "failed" in a.get("title", "")]
    if failed_tasks:
        return {
            "verdict": "failed",
            "summary": f"task {failed_tasks[0]['task_id']} failed: {failed_tasks[0]['title']}",
        }
    ran = {name for name, s in stages.items() if s["status"] == "success"}
    decision = run.get("decision") or {}
    if run["run_id"] == WORKSPACE:
        last = f"; last A/B decision: {decision['verdict']}" if decision else ""
        return {
            "verdict": "workspace",
            "summary": "no run recorded (stages run outside "
            f"`python -m shopflow`): the outputs as they are{last}",
        }
    promoted = (run["promotion"] or {}).get("outcome") or {}
    if promoted.get("promoted") and not promoted.get("already"):
        champion = promoted["champion"]
        return {
            "verdict": "promoted",
            "summary": f"champion is now #{champion['entry']} {champion['version']}",
        }
    if run["decision_fresh"] and decision:
        reasons = decision.get("reasons") or []
        verdict = "rejected" if decision["verdict"] == "reject" else "promote decided"
        return {"verdict": verdict, "summary": reasons[0] if reasons else decision["verdict"]}
    if run["drift_fresh"] and not ran & set(TRAINING_STAGES):
        drift = run.get("drift") or {}
        return {
            "verdict": "no retrain",
            "summary": f"drift: {drift.get('decision')}; "
            + "; ".join(drift.get("reasons", [])[:1]),
        }
    if not ran:
        return {"verdict": "up to date", "summary": "nothing ran: every stage was up to date"}
    return {"verdict": "ran", "summary": f"ran {', '.join(sorted(ran))}"}


def runner_result(exit_code: int, output: Path | None = None) -> dict:
    """What the command that ran the stages (`dvc repro`) said: its exit code and error lines.
    DVC can fail before any stage starts (a missing dependency, a lock held by another run,
    a broken dvc.yaml), and then no stage has a record to say so."""
    errors: list[str] = []
    if output is not None and output.exists():
        lines = output.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line.strip() for line in lines if line.startswith("ERROR")][-5:]
    return {"exit_code": exit_code, "errors": errors}


def unreported_runs(project: Path, reported: set[str]) -> list[dict]:
    """Runs in the run log with no page (a `dvc repro` with no `shopflow report` after it):
    listed in the index from their records alone, since their outputs are gone by now. Runs
    that only re-read the params are left out (`runlog.substantive`)."""
    records = runlog.substantive(runlog.read(project / paths.RUN_LOG))
    stages = pipeline_stages(project)
    runs = []
    for run_id in dict.fromkeys(r["run_id"] for r in records):
        if run_id in reported:
            continue
        rows = [s for s in stage_rows(stages, records, run_id) if s["status"] != "not run"]
        run = {
            "run_id": run_id,
            "stages": rows,
            "alerts": [],
            "promotion": None,
            "decision": None,
            "decision_fresh": False,
            "drift_fresh": False,
        }
        runs.append(
            {
                **run,
                "folder": None,
                "night": "–",
                "outcome": outcome(run),
                "started_at": min(s["started_at"] for s in rows),
                "written_at": "",
                "stage_seconds": round(sum(s["seconds"] for s in rows), 1),
            }
        )
    return runs

"""The run report: one static HTML page per run that the whole team can read, and an index.

It answers at a glance what the search manager, the analyst and the on-call engineer ask
after a night: what data came in, was it valid, did it drift, what was trained, is it better,
was it promoted, what is in production now.

Everything comes from files the stages already write: the run log (`pipelines.runlog`), the
metrics, the validation summary and Data Docs, the drift verdict and Evidently pages, the
DVCLive curves, the A/B decision and its per-query scores, the registry. So a report is
written the same way after `dvc repro`, after an Airflow night and after a failed night
(it then says where the run stopped and why), and can be written again later.

Each run gets `<report.folder>/<run id>/`: `index.html`, its charts (SVG), `run.json` (every
fact on the page, to re-render it) and copies of the Data Docs and the Evidently report,
which the next night overwrites in `reports/`. Only the newest `report.keep_linked_reports`
runs keep those copies; older pages are re-rendered without the links.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipelines import gate, runlog
from pipelines.artifacts import read_json, write_json
from pipelines.config import Params
from pipelines.nightly import DRIFT_REPORT
from pipelines.registry import Registry, params_hash

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
INGESTED = Path("data/ingested")
VALIDATION = Path("reports/validation")
DRIFT_PAGES = Path("reports/drift")
EVALUATION = Path("data/evaluation")
METRICS = Path("metrics")
LIVE = Path("dvclive")
ALERTS = Path(".shopflow/alerts.jsonl")
TRAINING_STAGES = ("prepare", "baselines", "pretrain", "retriever", "reranker", "evaluate")
NO_PROMOTION = {"outcome": None, "champion": None, "timeline": [], "service": None}
WORKSPACE = "workspace"  # the pseudo-run of a report written with no run log at all
LINKED = {"data_docs": VALIDATION / "data_docs", "drift": DRIFT_PAGES}  # copied per run


# -- gathering the facts ---------------------------------------------------------------------


def _json(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def pipeline_stages(project: Path) -> list[str]:
    """The stages of dvc.yaml, in the order they are written (the order they run in)."""
    return list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])


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

    manifest = _json(project / INGESTED / "manifest.json")
    if manifest is None:
        return None
    events = pd.read_parquet(project / INGESTED / "events.parquet", columns=["ts", "event_type"])
    days = events["ts"].dt.tz_convert("UTC").dt.date if events["ts"].dt.tz else events["ts"].dt.date
    per_day = pd.crosstab(days, events["event_type"])
    products = pd.read_parquet(project / INGESTED / "products.parquet", columns=["first_seen"])
    window = manifest.get("window", {})
    launched = pd.Series(dtype=int)
    if "first_seen" in products and len(products) and window.get("start"):
        seen = pd.to_datetime(products["first_seen"], utc=True, errors="coerce")
        days_seen = seen.dt.strftime("%Y-%m-%d").dropna()  # a source may not know launch days
        launched = days_seen[days_seen >= window["start"]].value_counts()
    per_day["new products"] = [int(launched.get(str(day), 0)) for day in per_day.index]
    tables = {n: {"rows": t["rows"], "sha256": t["sha256"]} for n, t in manifest["tables"].items()}
    return {
        "source": manifest.get("source"),
        "window": window,
        "tables": tables,
        "per_day": {str(day): {k: int(v) for k, v in row.items()}
                    for day, row in per_day.iterrows()},
        "quarantined_rows": manifest.get("quarantined_rows", 0),
        "privacy": manifest.get("privacy", {}),
    }  # fmt: skip


def training_section(project: Path) -> dict:
    """The training stages' final numbers (metrics/*.json) and which curves exist."""
    out = {}
    for stage in ("pretrain", "retriever", "reranker"):
        metrics = _json(project / METRICS / f"{stage}.json")
        curves = sorted(str(p.relative_to(project / LIVE / stage)) for p in
                        (project / LIVE / stage).glob("plots/metrics/**/*.tsv"))  # fmt: skip
        out[stage] = {"metrics": metrics, "curves": curves}
    return out


def promotion_section(project: Path, params: Params, promoted_now: bool) -> dict:
    """The registry as a timeline (newest first), the champion, and what is deployed."""
    registry = Registry(project / params.promote.registry)
    entries = [dataclasses.asdict(e) for e in registry.history()]
    champion = registry.champion()
    for i, entry in enumerate(entries):
        entry["until"] = entries[i + 1]["at"] if i + 1 < len(entries) else None
    service = _json(project / params.deploy.state / "service.json")
    return {
        "outcome": _json(project / METRICS / "promote.json") if promoted_now else None,
        "champion": dataclasses.asdict(champion) if champion else None,
        "timeline": entries[::-1],
        "service": service,
    }


def alerts_of(project: Path, run_id: str) -> list[dict]:
    path = project / ALERTS
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
    from pipelines.deploy import git_revision

    records = runlog.read(project / runlog.STAGE_LOG)
    stages = stage_rows(pipeline_stages(project), records, run_id)
    ran = {s["stage"] for s in stages if s["status"] == "success"}
    this = [r for r in records if r["run_id"] == run_id]
    problems = Problems()
    promotion = problems.guard("registry", promotion_section, project, params, "promote" in ran)
    decision = _json(project / gate.DECISION)
    validation = _json(project / VALIDATION / "summary.json")
    drift = _json(project / DRIFT_REPORT)
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
        return {"verdict": "failed",
                "summary": f"dvc repro exited with {runner['exit_code']}: {why}"}  # fmt: skip
    failed_tasks = [a for a in run["alerts"] if a.get("task_id") and "failed" in a.get("title", "")]
    if failed_tasks:
        return {"verdict": "failed", "summary": f"task {failed_tasks[0]['task_id']} failed: "
                f"{failed_tasks[0]['title']}"}  # fmt: skip
    ran = {name for name, s in stages.items() if s["status"] == "success"}
    decision = run.get("decision") or {}
    if run["run_id"] == WORKSPACE:
        last = f"; last A/B decision: {decision['verdict']}" if decision else ""
        return {"verdict": "workspace", "summary": "no run recorded (stages run outside "
                f"`python -m pipelines`): the outputs as they are{last}"}  # fmt: skip
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
        return {"verdict": "no retrain", "summary": f"drift: {drift.get('decision')}; "
                + "; ".join(drift.get("reasons", [])[:1])}  # fmt: skip
    if not ran:
        return {"verdict": "up to date", "summary": "nothing ran: every stage was up to date"}
    return {"verdict": "ran", "summary": f"ran {', '.join(sorted(ran))}"}


# -- charts ------------------------------------------------------------------------------------


def draw_charts(run: dict, project: Path, folder: Path) -> dict[str, str]:
    """The page's charts as SVG files in `folder`; name -> file name (absent when no data)."""
    import numpy as np
    import pandas as pd

    from pipelines import charts

    drawn: dict[str, str] = {}
    if run["data"] and run["data"]["per_day"]:
        per_day = pd.DataFrame.from_dict(run["data"]["per_day"], orient="index")
        events = per_day.drop(columns=["new products"], errors="ignore")
        drawn["events"] = charts.daily_events(events, folder / "events_per_day.svg").name
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    for stage, about in run["training"].items():
        for curve in about["curves"]:  # plots/metrics/<train|valid>/<name>.tsv
            frame = pd.read_csv(project / LIVE / stage / curve, sep="\t")
            if len(frame) and "step" in frame:
                panel = f"{stage}: {Path(curve).stem.replace('_', ' ')}"
                curves.setdefault(panel, {})[Path(curve).parent.name] = frame
    if curves:
        drawn["curves"] = charts.learning_curves(curves, folder / "learning_curves.svg").name
    decision = run.get("decision")
    if decision and decision.get("slices"):
        metric = decision["primary"]["metric"]
        drawn["slices"] = charts.slice_bars(decision["slices"], metric,
                                            folder / "slices.svg").name  # fmt: skip
    if decision:
        task, _, metric = decision["primary"]["metric"].partition("_")
        paths = [project / EVALUATION / f"{who}_{task}.parquet"
                 for who in ("champion", "challenger")]  # fmt: skip
        if all(p.exists() for p in paths):
            champion, challenger = (pd.read_parquet(p)[metric].to_numpy(np.float64) for p in paths)
            if len(champion) == len(challenger) and len(champion):
                drawn["scores"] = charts.score_distributions(
                    champion, challenger, metric, folder / "score_distributions.svg"
                ).name
    return drawn


# -- pages -----------------------------------------------------------------------------------


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )  # fmt: skip
    env.filters["num"] = _number
    env.filters["short"] = lambda text, n=12: (text or "")[:n]
    return env


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:.1e}"
    return f"{value:,.{digits}f}"


def render_run(run: dict, charts: dict[str, str], linked: dict[str, bool]) -> str:
    return _environment().get_template("run.html").render(run=run, charts=charts, linked=linked)


def render_or_fallback(run: dict, charts: dict[str, str], linked: dict[str, bool]) -> str:
    """The page; should an output have a shape the template does not know, a plain page with
    the verdict, the error and run.json (every fact) instead of no page at all."""
    try:
        return render_run(run, charts, linked)
    except Exception as exc:  # jinja2's errors and any surprise in the data
        log.exception("run report: the page could not be rendered; writing a plain one")
        esc = html.escape
        return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>shopflow run "
                f"{esc(run['run_id'])}</title></head><body><h1>Run {esc(run['run_id'])}</h1>"
                f"<p id='run-verdict'>{esc(run['outcome']['verdict'])}</p>"
                f"<p>{esc(run['outcome']['summary'])}</p><p>The full page could not be "
                f"rendered: {esc(type(exc).__name__)}: {esc(str(exc))}. Every fact is in "
                "<a href='run.json'>run.json</a>.</p><p><a href='../index.html'>all runs</a>"
                "</p></body></html>")  # fmt: skip


def render_index(runs: list[dict]) -> str:
    return _environment().get_template("index.html").render(runs=runs)


def folder_name(run_id: str) -> str:
    """A file-system-safe folder per run id (Airflow's ids hold ':' and '+')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.") or "run"


def runner_result(exit_code: int, output: Path | None = None) -> dict:
    """What the command that ran the stages (`dvc repro`) said: its exit code and error lines.
    DVC can fail before any stage starts (a missing dependency, a lock held by another run,
    a broken dvc.yaml), and then no stage has a record to say so."""
    errors: list[str] = []
    if output is not None and output.exists():
        lines = output.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line.strip() for line in lines if line.startswith("ERROR")][-5:]
    return {"exit_code": exit_code, "errors": errors}


def write(
    params: Params,
    run_id: str | None = None,
    project: Path = Path(),
    night: str | None = None,
    runner: dict | None = None,
) -> Path:
    """Write the report of `run_id` (default: the latest run in the run log) and the index;
    returns the page's path. `runner`: see `runner_result`."""
    root = project / params.report.folder
    if run_id is None:
        run_id = runlog.latest_run_id(runlog.read(project / runlog.STAGE_LOG)) or WORKSPACE
    folder = root / folder_name(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    run = collect(params, run_id, project, night, runner)
    linked = {}
    for name, source in LINKED.items():
        shutil.rmtree(folder / name, ignore_errors=True)
        linked[name] = (project / source / "index.html").exists()
        if linked[name]:
            shutil.copytree(project / source, folder / name)
    run["charts"] = run["problems"].guard("charts", draw_charts, run, project, folder) or {}
    run["linked"] = linked
    write_json(folder / "run.json", run)
    page = folder / "index.html"
    page.write_text(render_or_fallback(run, run["charts"], linked), encoding="utf-8")
    runs = index_runs(root, params.report.keep_linked_reports)
    runs += unreported_runs(project, {r["run_id"] for r in runs})
    runs.sort(key=lambda r: r.get("started_at") or r["written_at"], reverse=True)
    (root / "index.html").write_text(render_index(runs), encoding="utf-8")
    log.info("run report of %s (%s: %s): %s", run_id, run["outcome"]["verdict"],
             run["outcome"]["summary"], page)  # fmt: skip
    return page


def index_runs(root: Path, keep_linked: int | None) -> list[dict]:
    """Every run under `root`, newest first; runs past the newest `keep_linked` lose their
    copies of the Data Docs and Evidently pages (their page is re-rendered without links)."""
    runs = []
    for path in root.glob("*/run.json"):
        run = _json(path)
        if run is not None:
            runs.append(run | {"folder": path.parent.name})
    runs.sort(key=lambda r: r.get("started_at") or r["written_at"], reverse=True)
    for run in runs[keep_linked:] if keep_linked else []:
        folder = root / run["folder"]
        if not any(run["linked"].values()):
            continue
        for name in LINKED:
            shutil.rmtree(folder / name, ignore_errors=True)
        run["linked"] = dict.fromkeys(LINKED, False)
        run["linked_pruned"] = True
        write_json(folder / "run.json", {k: v for k, v in run.items() if k != "folder"})
        (folder / "index.html").write_text(render_or_fallback(run, run["charts"], run["linked"]),
                                           encoding="utf-8")  # fmt: skip
    return runs


def unreported_runs(project: Path, reported: set[str]) -> list[dict]:
    """Runs in the run log with no page (a `dvc repro` with no `shopflow report` after it):
    listed in the index from their records alone, since their outputs are gone by now."""
    records = runlog.read(project / runlog.STAGE_LOG)
    stages = pipeline_stages(project)
    runs = []
    for run_id in dict.fromkeys(r["run_id"] for r in records):
        if run_id in reported:
            continue
        rows = [s for s in stage_rows(stages, records, run_id) if s["status"] != "not run"]
        run = {"run_id": run_id, "stages": rows, "alerts": [], "promotion": None,
               "decision": None, "decision_fresh": False, "drift_fresh": False}  # fmt: skip
        runs.append({
            **run, "folder": None, "night": "–", "outcome": outcome(run),
            "started_at": min(s["started_at"] for s in rows), "written_at": "",
            "stage_seconds": round(sum(s["seconds"] for s in rows), 1),
        })  # fmt: skip
    return runs

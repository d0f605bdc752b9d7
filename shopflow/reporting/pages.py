"""The run report: one static HTML page per run that the whole team can read, and an index.

It answers at a glance what the search manager, the analyst and the on-call engineer ask
after a night: what data came in, was it valid, did it drift, what was trained, is it better,
was it promoted, what is in production now.

Everything comes from files the stages already write (`reporting.facts`): the run log, the
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

import html
import logging
import re
import shutil
from pathlib import Path

from shopflow.core import paths
from shopflow.core.artifacts import write_json
from shopflow.core.config import Params
from shopflow.orchestration import runlog
from shopflow.reporting.facts import WORKSPACE, collect, read_fact, unreported_runs

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
LINKED = {"data_docs": paths.DATA_DOCS, "drift": paths.DRIFT_PAGES}  # copied into each run


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
        run_id = runlog.latest_run_id(runlog.read(project / paths.RUN_LOG)) or WORKSPACE
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
    log.info(
        "run report of %s (%s: %s): %s",
        run_id,
        run["outcome"]["verdict"],
        run["outcome"]["summary"],
        page,
    )
    return page


def index_runs(root: Path, keep_linked: int | None) -> list[dict]:
    """Every run under `root`, newest first; runs past the newest `keep_linked` lose their
    copies of the Data Docs and Evidently pages (their page is re-rendered without links)."""
    runs = []
    for path in root.glob("*/run.json"):
        run = read_fact(path)
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
        (folder / "index.html").write_text(
            render_or_fallback(run, run["charts"], run["linked"]), encoding="utf-8"
        )
    return runs


def draw_charts(run: dict, project: Path, folder: Path) -> dict[str, str]:
    """The page's charts as SVG files in `folder`; name -> file name (absent when no data)."""
    import numpy as np
    import pandas as pd

    from shopflow.reporting import charts

    drawn: dict[str, str] = {}
    if run["data"] and run["data"]["per_day"]:
        per_day = pd.DataFrame.from_dict(run["data"]["per_day"], orient="index")
        events = per_day.drop(columns=["new products"], errors="ignore")
        drawn["events"] = charts.daily_events(events, folder / "events_per_day.svg").name
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    for stage, about in run["training"].items():
        for curve in about["curves"]:  # plots/metrics/<train|valid>/<name>.tsv
            frame = pd.read_csv(project / paths.live(stage) / curve, sep="\t")
            if len(frame) and "step" in frame:
                panel = f"{stage}: {Path(curve).stem.replace('_', ' ')}"
                curves.setdefault(panel, {})[Path(curve).parent.name] = frame
    if curves:
        drawn["curves"] = charts.learning_curves(curves, folder / "learning_curves.svg").name
    decision = run.get("decision")
    if decision and decision.get("slices"):
        metric = decision["primary"]["metric"]
        drawn["slices"] = charts.slice_bars(decision["slices"], metric, folder / "slices.svg").name
    if decision:
        task, _, metric = decision["primary"]["metric"].partition("_")
        files = [
            project / paths.EVALUATION / f"{who}_{task}.parquet"
            for who in ("champion", "challenger")
        ]
        if all(p.exists() for p in files):
            champion, challenger = (pd.read_parquet(p)[metric].to_numpy(np.float64) for p in files)
            if len(champion) == len(challenger) and len(champion):
                drawn["scores"] = charts.score_distributions(
                    champion, challenger, metric, folder / "score_distributions.svg"
                ).name
    return drawn


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
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
        return (
            f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>shopflow run "
            f"{esc(run['run_id'])}</title></head><body><h1>Run {esc(run['run_id'])}</h1>"
            f"<p id='run-verdict'>{esc(run['outcome']['verdict'])}</p>"
            f"<p>{esc(run['outcome']['summary'])}</p><p>The full page could not be "
            f"rendered: {esc(type(exc).__name__)}: {esc(str(exc))}. Every fact is in "
            "<a href='run.json'>run.json</a>.</p><p><a href='../index.html'>all runs</a>"
            "</p></body></html>"
        )


def render_index(runs: list[dict]) -> str:
    return _environment().get_template("index.html").render(runs=runs)


def folder_name(run_id: str) -> str:
    """A file-system-safe folder per run id (Airflow's ids hold ':' and '+')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.") or "run"

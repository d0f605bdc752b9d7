"""The drift check's pages: a summary page (no scripts, renders offline) that links
Evidently's own HTML reports of the behaviour, prediction and embedding drift: the snapshots
of the very runs that measured them (`monitoring.drift.measure`), saved, not recomputed."""

from __future__ import annotations

import html
import math
from pathlib import Path

from shopflow.monitoring.drift import EMBEDDINGS

PAGES = {
    "tabular": ("evidently.html", "Evidently: behaviour and prediction drift"),
    **{
        name: (f"{name}.html", f"Evidently: embedding drift of the {what}")
        for name, what in EMBEDDINGS.items()
    },
}


def write_reports(result: dict, snapshots: dict[str, object], folder: Path) -> None:
    """A summary page (no scripts, renders offline) linking Evidently's own reports."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for name, (page, what) in PAGES.items():
        snapshot = snapshots.get(name)
        if snapshot is None:  # not measured tonight: no stale page of another night
            (folder / page).unlink(missing_ok=True)
            continue
        snapshot.save_html(str(folder / page))  # type: ignore[attr-defined]
        links.append((page, what))
    (folder / "index.html").write_text(summary_page(result, links), encoding="utf-8")


COLOURS = {
    "none": "#1a7f37",
    "retrain": "#9a6700",
    "alert": "#cf222e",
    "insufficient_data": "#57606a",
}


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

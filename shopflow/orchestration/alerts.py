"""Alerts: a failed task, a drift alert, a failed deployment.

Every alert is logged at ERROR and appended to `.shopflow/alerts.jsonl` (the run report and
the on-call read it); when a webhook is configured it is also POSTed there as JSON with a
`text` field, which Slack, Mattermost and Teams incoming webhooks display as is.

In Airflow the webhook is a connection (`airflow.alert_connection`, default
`shopflow_alerts`), e.g. `AIRFLOW_CONN_SHOPFLOW_ALERTS='https://hooks.slack.com/services/...'`
or one made in the UI; without it, alerts are logged only. A webhook that is down never
fails the task that alerts: the alert is still in the log and the file. A failed task alerts
through `FailureNotifier`, an Airflow notifier, so other notifiers (Slack, SMTP, a provider's
or your own) can sit beside it in the DAGs' `on_failure_callback`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow.sdk import BaseNotifier

from shopflow.core import paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    """What went wrong, where, and where to look."""

    title: str
    details: str = ""
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    logical_date: str | None = None
    try_number: int | None = None
    log_url: str | None = None
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def text(self) -> str:
        where = ".".join(p for p in (self.dag_id, self.task_id) if p)
        head = f"[shopflow] {self.title}" + (f" ({where}, {self.run_id})" if where else "")
        lines = [head, self.details[-1500:]] if self.details else [head]
        if self.log_url:
            lines.append(f"log: {self.log_url}")
        return "\n".join(lines)


def send(alert: Alert, webhook: str | None = None, record: Path = paths.ALERTS) -> bool:
    """Log and record `alert`; POST it to `webhook` when given. True if the webhook took it."""
    log.error("ALERT %s", alert.text)
    record.parent.mkdir(parents=True, exist_ok=True)
    with record.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(alert), sort_keys=True) + "\n")
    if not webhook:
        return False
    import httpx

    try:
        response = httpx.post(webhook, json={"text": alert.text, **asdict(alert)}, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.error("the alert webhook failed (%s); the alert is in %s", exc, record)
        return False
    return True


def webhook_url(conn: Any) -> str | None:
    """The URL of an Airflow connection used as a webhook: its `url` extra, else its URI parts
    (`http(s)://host[:port]/schema`)."""
    extra = conn.extra_dejson or {}
    if extra.get("url"):
        return str(extra["url"])
    if not conn.host:
        return None
    if conn.host.startswith(("http://", "https://")):
        return conn.host
    scheme = "https" if conn.conn_type == "https" else "http"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema}" if conn.schema else ""
    return f"{scheme}://{conn.host}{port}{path}"


def airflow_webhook(conn_id: str) -> str | None:
    """The webhook of Airflow connection `conn_id`; None when it is not configured."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return webhook_url(BaseHook.get_connection(conn_id))
    except AirflowNotFoundException:
        return None


def from_airflow_context(context: dict, title: str, details: str = "") -> Alert:
    ti = context.get("ti") or context.get("task_instance")
    run = context.get("dag_run")
    logical = context.get("logical_date")
    return Alert(
        title=title,
        details=details,
        dag_id=getattr(ti, "dag_id", None),
        task_id=getattr(ti, "task_id", None),
        run_id=getattr(run, "run_id", None) or getattr(ti, "run_id", None),
        logical_date=logical.isoformat() if logical else None,
        try_number=getattr(ti, "try_number", None),
        log_url=getattr(ti, "log_url", None),
    )


class Alerter:
    """The alerts of one project run by Airflow: recorded under `project`, POSTed to the
    webhook of connection `conn_id` when it exists (looked up at alert time, so a webhook
    added in the UI works without touching the DAGs)."""

    def __init__(self, project: Path, conn_id: str) -> None:
        self.record, self.conn_id = project / paths.ALERTS, conn_id

    def __call__(self, alert: Alert) -> bool:
        return send(alert, airflow_webhook(self.conn_id), self.record)


class FailureNotifier(BaseNotifier):
    """The notifier of a task that failed for good (retries spent, or input that no retry can
    fix): its alert, recorded under `project` and POSTed to connection `conn_id`'s webhook."""

    def __init__(self, project: Path, conn_id: str) -> None:
        super().__init__()
        self.alerter = Alerter(project, conn_id)

    def notify(self, context: Any) -> None:
        why = str(context.get("exception") or "")
        self.alerter(from_airflow_context(context, "task failed", why))

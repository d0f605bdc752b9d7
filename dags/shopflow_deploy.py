"""shopflow_deploy: when the nightly run promotes a model, put its Bento into production.

    shopflow://champion (asset, from shopflow_nightly's promote) → deploy → check

Scheduled on the champion asset, so it runs once per promotion (and by hand after a
`shopflow rollback`). `deploy` serves the champion's Bento on 127.0.0.1 in the background,
replacing the previous one (params `deploy.target: local`), or rolls the BentoCloud
deployment `deploy.name` to it (`deploy.target: bentocloud`). `check` asks the running
service which model it serves. The work is `shopflow deploy` (shopflow/release/deploy.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys

from airflow.sdk import DAG, Asset, task
from airflow.sdk.exceptions import AirflowFailException

from shopflow.core import paths
from shopflow.core.config import load_params
from shopflow.orchestration import alerts, nightly

PROJECT = nightly.project_dir(__file__)
CHAMPION = Asset(nightly.CHAMPION_ASSET)
log = logging.getLogger(__name__)

settings = load_params(PROJECT / paths.PARAMS).airflow


def shopflow(*args: str) -> dict:
    """`python -m shopflow <args>` in the project; its last output line, as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "shopflow", *args], cwd=PROJECT, capture_output=True, text=True
    )
    log.info("%s", done.stderr[-5000:])
    if done.returncode != 0:
        raise AirflowFailException(
            f"shopflow {' '.join(args)} failed ({done.returncode}): "
            f"{done.stderr.strip().splitlines()[-1:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


@task
def deploy(triggering_asset_events=None) -> dict:
    """The champion's Bento, served locally or rolled out to BentoCloud."""
    for event in (triggering_asset_events or {}).get(CHAMPION, []):
        log.info("promoted: %s", event.extra)
    return shopflow("deploy")


@task
def check(deployed: dict) -> dict:
    """The running service answers and serves the champion."""
    if deployed["target"] != "local":
        return deployed
    import httpx

    about = httpx.get(f"{deployed['url']}/version", timeout=10).json()
    if about.get("model_version") != deployed["version"]:
        raise AirflowFailException(f"{deployed['url']} serves {about}, not {deployed['version']}")
    return about


with DAG(
    dag_id="shopflow_deploy",
    description="serve or roll out the champion's Bento after each promotion",
    doc_md=__doc__,
    schedule=[CHAMPION],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=nightly.task_defaults(
        settings, alerts.FailureNotifier(PROJECT, settings.alert_connection)
    ),
    tags=["shopflow", "bentoml"],
) as dag:
    check(deploy())  # type: ignore[arg-type]  # TaskFlow hands `check` the XCom's value

"""Airflow as a deployment runs it: Postgres, Redis, CeleryExecutor and two Celery workers,
each with its own clone of the project (`make airflow-cluster`), all on 127.0.0.1.

One tiny night: the training stages run on the worker of the `gpu` queue, everything else on
the `default` worker; each task restores the upstream stages it needs from the DVC remote's
run cache and pushes its outputs and run, so every output reaches the worker that needs it
without a shared project folder, and no stage runs twice.
The cluster then stops by pid.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from shopflow.core.config import load_params
from shopflow.core.processes import is_running
from shopflow.orchestration import handover
from tests.conftest import copy_project, open_registry
from tools import airflow_cluster as cluster
from tools import servers

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

GPU_STAGES = ("pretrain", "retriever", "reranker")
DEFAULT_STAGES = (
    "ingest",
    "validate",
    "drift",
    "prepare",
    "baselines",
    "recommender",
    "evaluate",
)
# the cluster's own settings (set in each clone's params.yaml): no schedule (only the test's
# run), no retries (a failure shows at once), fewer training steps than the tiny profile
# (where the work runs is tested here, not what it learns)
SETTINGS = {
    "airflow": {"schedule": None, "retries": 0},
    "pretrain": {"steps": 10, "checkpoint_every": 5},
    "retriever": {"steps": 10, "checkpoint_every": 5},
    "reranker": {"steps": 10, "checkpoint_every": 5},
}
FORCED = {"force_promote_reason": "the cluster test", "force_promote_by": "pytest"}


def servers_missing() -> str | None:
    try:
        servers.postgres_bin("initdb")
    except servers.ServerError as exc:
        return str(exc)
    return None if shutil.which("redis-server") else "redis-server not found (make cluster-deps)"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    missing = servers_missing()
    if missing:
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("cluster")
    project = copy_project(root / "project")
    started = time.perf_counter()
    up = cluster.start(project, root / "cluster", SETTINGS)
    up_seconds = time.perf_counter() - started
    try:
        yield up, up_seconds
    finally:
        cluster.stop(up.folder)


def returned(task: dict) -> dict:
    """A stage task's result (other tasks return a page's path or a decision)."""
    value = task["returned"]
    return value if isinstance(value, dict) else {}


def test_a_night_runs_across_two_workers_through_the_dvc_remote(running):
    up, up_seconds = running
    started = time.perf_counter()
    # forced: whatever the gate says of a tiny model, the promote task builds and smoke-tests
    # a Bento on the default worker from models trained on the gpu worker
    run_id = up.trigger("2026-10-28", "cluster-night", FORCED)
    state = up.wait(run_id, timeout=2400)
    tasks = up.tasks(run_id)
    timeline = {
        name: (
            about["state"],
            returned(about).get("project", "").rsplit("/", 1)[-1],
            about["seconds"],
        )
        for name, about in sorted(tasks.items())
    }
    print(f"cluster up in {up_seconds:.0f} s; night in {time.perf_counter() - started:.0f} s")
    print(json.dumps(timeline, indent=1))
    assert state == "success", timeline

    default, gpu = up.clone("default"), up.clone("gpu")
    for stage in (*DEFAULT_STAGES, *GPU_STAGES):
        about = returned(tasks[stage])
        worker = gpu if stage in GPU_STAGES else default
        assert tasks[stage]["queue"] == ("gpu" if stage in GPU_STAGES else "default")
        assert about["project"] == str(worker), (stage, about["project"])
        assert about["ran"] == [stage], (stage, about)
    assert tasks["report"]["state"] == tasks["promote"]["state"] == "success"

    # what each worker received came from the other through the remote's run cache: DVC
    # wrote the same dvc.lock entries in both clones (a stage restored, not run: a run
    # would have been refused and failed the night)
    on_default, on_gpu = handover.read_entries(default), handover.read_entries(gpu)
    for stage in (*GPU_STAGES, "ingest", "validate", "prepare", "baselines"):
        assert on_default[stage] == on_gpu[stage], stage
    assert (default / "data/models/retriever").is_dir()  # restored for evaluate
    assert (gpu / "data/prepared").is_dir()  # restored for pretrain and retriever
    # the night and the cluster's settings went into each clone's params.yaml
    for clone in (default, gpu):
        tracked = load_params(clone / "params.yaml")
        assert (
            tracked.ingest.window.end.isoformat() == "2026-10-28" and tracked.retriever.steps == 10
        )

    assert returned(tasks["promote"])["project"] == str(default)
    registry = open_registry(up.shared / "state/registry")  # one registry for every worker
    champion = registry.champion()
    assert champion.kind == "model" and champion.action == "force"
    assert champion.decision["forced_by"] == "pytest"
    store = up.shared / "bentoml"  # one BentoML store for every worker
    assert (store / "bentos" / champion.bento_tag.replace(":", "/")).is_dir()


def test_the_cluster_stops_by_pid(running):
    up, _ = running
    processes = up.processes()
    assert {"postgres", "redis", "api-server", "scheduler", "dag-processor"} <= set(processes)
    assert {"worker-default", "worker-gpu"} <= set(processes)
    stopped = cluster.stop(up.folder)
    assert all(stopped.values()), stopped  # every component was still running
    assert not any(is_running(p["pid"], p["started"]) for p in processes.values())

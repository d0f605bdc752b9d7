"""Airflow beyond one process, on this machine: Postgres, Redis, CeleryExecutor, two workers.

`make airflow-cluster` starts what a multi-machine deployment runs, each piece a real server
bound to 127.0.0.1: Postgres as the metadata database, Redis as Celery's broker, the API
server, the scheduler, the DAG processor, and two Celery workers: `default` serves the
default queue, `gpu` the queue of the training stages (`airflow.gpu_queue`). Each worker has
its **own clone** of the project, so no project folder is shared: stage inputs and outputs
travel through the DVC remote's run cache (`airflow.dvc_remote`, `orchestration.handover`). What the
workers do share is the state a second machine would mount: the registry and run log
(`.shopflow/`, a link to `shared/state`), the DVC remote folder inside it, and the BentoML
store (`shared/bentoml`).

Every process is recorded with its pid and start time in `cluster.json`; `stop` stops them by
pid (a pid is only signalled while it is still the process that was started).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopflow.core import paths
from shopflow.core.artifacts import read_json, write_json
from shopflow.core.config import flatten, load_params, set_params
from tools import servers
from tools.servers import ServerError

log = logging.getLogger(__name__)

REMOTE = "store"  # the DVC remote every clone pushes to and pulls from
DAG_ID = "shopflow_nightly"
WORKERS = ("default", "gpu")  # each with its own clone; `gpu` serves airflow.gpu_queue
AIRFLOW_COMPONENTS = ("worker-gpu", "worker-default", "scheduler", "dag-processor", "api-server")


@dataclass(frozen=True)
class Cluster:
    """The cluster in `folder` (made by `start`; read back with `Cluster.at`)."""

    folder: Path
    ports: Mapping[str, int]
    secret: str
    project: Path

    # -- layout ---------------------------------------------------------------------------

    @property
    def shared(self) -> Path:
        return self.folder / "shared"

    def clone(self, name: str) -> Path:
        return self.folder / "clones" / name

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.ports['postgres']}/airflow"

    def env(self, clone: str) -> dict[str, str]:
        """A component's environment: Airflow on Postgres + Redis, the DAGs and the project
        of its own clone, the shared BentoML store."""
        project = self.clone(clone)
        return {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(project),
            "SHOPFLOW_PROJECT": str(project),
            "BENTOML_HOME": str(self.shared / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "DVC_NO_ANALYTICS": "1",
            "AIRFLOW_HOME": str(self.folder / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.database_url}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
                f"http://127.0.0.1:{self.ports['api']}/execution/"
            ),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__API_AUTH__JWT_SECRET": self.secret,
            "AIRFLOW__API__SECRET_KEY": self.secret,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # 127.0.0.1 only
        }

    @classmethod
    def at(cls, folder: Path) -> Cluster:
        state = read_json(folder / "cluster.json")
        return cls(Path(folder), state["ports"], state["secret"], Path(state["project"]))

    @property
    def table(self) -> servers.ProcessTable:
        """Its processes (pids in cluster.json, logs in logs/)."""
        return servers.ProcessTable(self.folder / "cluster.json", self.folder / "logs")

    def processes(self) -> dict[str, dict]:
        return self.table.processes()

    # -- queries ----------------------------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[tuple]:
        """Rows from the metadata database."""
        import psycopg2

        with (
            psycopg2.connect(
                host="127.0.0.1", port=self.ports["postgres"], user="airflow", dbname="airflow"
            ) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, args)
            return cursor.fetchall() if cursor.description else []

    def airflow(self, *args: str, clone: str = "scheduler", timeout: float = 300) -> str:
        """An `airflow` CLI command in a component's environment; its output."""
        command = [str(Path(sys.executable).with_name("airflow")), *args]
        return servers.run_checked(command, env=self.env(clone), timeout=timeout)

    def trigger(self, night: str, run_id: str, conf: Mapping | None = None) -> str:
        """Start a night of the nightly DAG (its logical date: the night)."""
        self.airflow("dags", "unpause", DAG_ID)
        self.airflow(
            "dags",
            "trigger",
            DAG_ID,
            "--logical-date",
            f"{night}T00:00:00+00:00",
            "--run-id",
            run_id,
            "--conf",
            json.dumps(dict(conf or {})),
        )
        return run_id

    def wait(self, run_id: str, timeout: float = 3600, poll: float = 5) -> str:
        """The run's final state (success or failed), polling the metadata database."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.query("SELECT state FROM dag_run WHERE run_id = %s", run_id)
            if rows and rows[0][0] in ("success", "failed"):
                return str(rows[0][0])
            self._check_alive()
            time.sleep(poll)
        raise ServerError(f"run {run_id} did not finish in {timeout:.0f} s")

    def tasks(self, run_id: str) -> dict[str, dict]:
        """Each task of a run: state, queue, start, end, and what it returned."""
        rows = self.query(
            "SELECT task_id, state, queue, start_date, end_date FROM task_instance "
            "WHERE run_id = %s",
            run_id,
        )
        returned = dict(
            self.query(
                "SELECT task_id, value FROM xcom WHERE run_id = %s AND key = 'return_value'",
                run_id,
            )
        )
        return {
            task: {
                "state": state,
                "queue": queue,
                "seconds": (end - start).total_seconds() if start and end else None,
                "returned": returned.get(task),
            }
            for task, state, queue, start, end in rows
        }

    def _check_alive(self) -> None:
        dead = [name for name, alive in self.table.alive().items() if not alive]
        if dead:
            raise ServerError(
                f"cluster component(s) {', '.join(dead)} died: see {self.folder}/logs"
            )


# -- start and stop ---------------------------------------------------------------------------


def _clone(cluster: Cluster, name: str, local_params: Mapping[str, Any]) -> Path:
    """A worker's own clone: the committed project, `.shopflow` linked to the shared state,
    the DVC remote `store` in the shared state, and the cluster's settings in its params.yaml."""
    target = cluster.clone(name)
    servers.run_checked(["git", "clone", "-q", str(cluster.project), str(target)])
    state = cluster.shared / "state"
    state.mkdir(parents=True, exist_ok=True)
    (target / paths.STATE).symlink_to(state, target_is_directory=True)
    dvc = str(Path(sys.executable).with_name("dvc"))
    remote = [dvc, "remote", "add", "--local", "--force", "-d", REMOTE, str(state / "dvc-remote")]
    servers.run_checked(remote, cwd=target)
    set_params(target / paths.PARAMS, dict(flatten(dict(local_params))))
    return target


def start(
    project: Path,
    folder: Path = paths.CLUSTER,
    local_params: Mapping[str, Any] | None = None,
) -> Cluster:
    """Start the cluster for `project`'s committed HEAD in `folder` (made fresh)."""
    folder = Path(folder).resolve()
    if (folder / "cluster.json").exists() and any(Cluster.at(folder).table.alive().values()):
        raise ServerError(f"a cluster is already running in {folder}: stop it first")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ports = {name: servers.free_port() for name in ("postgres", "redis", "api")}
    cluster = Cluster(folder, ports, secrets.token_hex(16), Path(project).resolve())
    state = {"ports": ports, "secret": cluster.secret, "project": str(cluster.project)}
    write_json(folder / "cluster.json", state | {"processes": {}})
    given = dict(local_params or {})
    settings = {"dvc_remote": REMOTE, "gpu_queue": "gpu"} | dict(given.get("airflow", {}))
    try:
        data = servers.postgres_data(folder)
        servers.start_postgres(cluster.table, data, ports["postgres"], servers.DATABASE_USER)
        servers.start_redis(cluster.table, folder / "redis", ports["redis"])
        for name in ("scheduler", *WORKERS):
            _clone(cluster, name, given | {"airflow": settings})
        gpu_pool = load_params(cluster.project / paths.PARAMS).airflow.gpu_pool
        _start_airflow(cluster, gpu_pool, settings["gpu_queue"])
    except BaseException:
        stop(folder)
        raise
    log.info(
        "cluster up: Airflow UI http://127.0.0.1:%d (stop: make airflow-cluster-stop)", ports["api"]
    )
    return cluster


def _start_airflow(cluster: Cluster, gpu_pool: str, gpu_queue: str) -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    cluster.airflow("db", "migrate", timeout=600)
    cluster.airflow("pools", "set", gpu_pool, "1", "one training task at a time")
    env, spawn = cluster.env("scheduler"), cluster.table.spawn
    api = [airflow, "api-server", "--host", "127.0.0.1", "--port", str(cluster.ports["api"])]
    spawn("api-server", api, env, cluster.folder)
    spawn("scheduler", [airflow, "scheduler"], env, cluster.folder)
    spawn("dag-processor", [airflow, "dag-processor"], env, cluster.folder)
    for name in WORKERS:
        worker = [airflow, "celery", "worker", "--concurrency", "1", "--skip-serve-logs"]
        queue = gpu_queue if name == "gpu" else "default"
        worker += ["--queues", queue, "--celery-hostname", f"{name}@%h"]
        spawn(f"worker-{name}", worker, cluster.env(name), cluster.folder)
    servers.wait_for(
        "the nightly DAG",
        lambda: cluster.query("SELECT 1 FROM dag WHERE dag_id = %s", DAG_ID),
        timeout=300,
    )
    for name in WORKERS:
        log_file = cluster.folder / "logs" / f"worker-{name}.log"
        ready = lambda f=log_file: " ready." in f.read_text(errors="replace")  # noqa: E731
        servers.wait_for(f"worker {name}", ready, timeout=300)


def stop(folder: Path = paths.CLUSTER) -> dict[str, bool]:
    """Stop every component by pid (workers first, Postgres last); which ones were running."""
    folder = Path(folder).resolve()
    if not (folder / "cluster.json").exists():
        return {}
    table = Cluster.at(folder).table
    names = list(table.processes())
    order = [n for n in AIRFLOW_COMPONENTS if n in names] + [
        n for n in names if n not in AIRFLOW_COMPONENTS and n != "postgres"
    ]
    stopped = {name: table.stop(name) for name in order}
    if "postgres" in names:
        data = servers.postgres_data(folder)
        stopped["postgres"] = servers.stop_postgres(table, data)
        if os.geteuid() == 0:  # outside the cluster's folder; `start` makes it anew
            shutil.rmtree(data, ignore_errors=True)
    log.info("stopped: %s", ", ".join(n for n, alive in stopped.items() if alive) or "nothing")
    return stopped


def status(folder: Path = paths.CLUSTER) -> dict[str, Any]:
    """Which components run, their pids, the UI's address."""
    folder = Path(folder).resolve()
    if not (folder / "cluster.json").exists():
        return {"folder": str(folder), "running": {}}
    cluster = Cluster.at(folder)
    return {
        "folder": str(folder),
        "ui": f"http://127.0.0.1:{cluster.ports['api']}",
        "running": {
            name: {"pid": about["pid"], "alive": cluster.table.alive()[name]}
            for name, about in cluster.processes().items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m tools.airflow_cluster start|stop|status [--folder F]` (`make airflow-cluster`)."""
    import argparse

    from shopflow.cli import configure_logging
    from tools import exit_code_of

    parser = argparse.ArgumentParser(prog="python -m tools.airflow_cluster", description=__doc__)
    parser.add_argument("what", choices=["start", "stop", "status"], nargs="?", default="status")
    parser.add_argument(
        "--folder", type=Path, default=paths.CLUSTER, help="its servers, clones and shared state"
    )
    args = parser.parse_args(argv)
    configure_logging(verbose=False)

    def act() -> None:
        if args.what == "start":
            print(json.dumps(status(start(Path.cwd(), args.folder).folder), indent=2))
        elif args.what == "stop":
            print(json.dumps(stop(args.folder)))
        else:
            print(json.dumps(status(args.folder), indent=2))

    return exit_code_of("airflow cluster", act)


if __name__ == "__main__":
    sys.exit(main())

"""Local server processes for the Airflow cluster: PostgreSQL and Redis on 127.0.0.1, and a
table of every process started in the background (pid and start time in a JSON file), so that
each is stopped by pid, and only while it is still the process that was started."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shopflow.core.artifacts import read_json, write_json
from shopflow.core.errors import ShopflowError
from shopflow.core.processes import is_running, started_at, stop_process_tree

log = logging.getLogger(__name__)

DATABASE_USER = "airflow"


class ServerError(ShopflowError):
    """A server cannot start: a missing binary, a failed command, a component that died."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 180) -> None:
    """Poll `check` until it returns something true (exceptions mean: not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(1)
    raise ServerError(f"{what} did not come up in {timeout:.0f} s")


def run_checked(command: Sequence[str], **kwargs: Any) -> str:
    """Run `command`; its output, or an error that shows what it printed."""
    done = subprocess.run(list(command), capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        shown = f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        raise ServerError(f"{' '.join(command)} failed:\n{shown}")
    return done.stdout


class ProcessTable:
    """The background processes of one cluster, recorded in `path` (a JSON file whose
    `processes` maps a name to pid, start time and command); logs in `logs/<name>.log`."""

    def __init__(self, path: Path, logs: Path) -> None:
        self.path, self.logs = Path(path), Path(logs)

    def processes(self) -> dict[str, dict]:
        return read_json(self.path).get("processes", {}) if self.path.exists() else {}

    def spawn(self, name: str, command: Sequence[str], env: dict[str, str], cwd: Path) -> dict:
        """Start `command` in a session of its own (so a stop reaches its children)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as out:
            process = subprocess.Popen(
                list(command),
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        about = {"pid": process.pid, "started": started_at(process.pid), "command": list(command)}
        state = read_json(self.path) if self.path.exists() else {}
        state.setdefault("processes", {})[name] = about
        write_json(self.path, state)
        log.info("started %s (pid %d), log: %s", name, process.pid, self.logs / f"{name}.log")
        return about

    def alive(self) -> dict[str, bool]:
        return {
            name: is_running(about["pid"], about["started"])
            for name, about in self.processes().items()
        }

    def stop(self, name: str) -> bool:
        """Stop one process and its children by pid; False when it was not running."""
        about = self.processes().get(name)
        if about is None or not is_running(about["pid"], about["started"]):
            return False
        stop_process_tree(about["pid"], grace_s=30)
        return True


# -- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    raise ServerError(f"{name} not found: install PostgreSQL (`make cluster-deps`)")


def postgres_data(folder: Path) -> Path:
    """The database's folder for a cluster in `folder`. As root the server runs as Debian's
    `postgres` user, which may not enter the cluster's folder (pytest's are private), so it
    lives in a folder of its own in /tmp."""
    if os.geteuid() != 0:
        return Path(folder) / "postgres"
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"shopflow-postgres-{digest}"


def as_db_owner(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_postgres(table: ProcessTable, data: Path, port: int, database: str) -> None:
    """A fresh PostgreSQL in `data` on 127.0.0.1:`port` (trust auth, local only) with an
    empty `database` owned by `DATABASE_USER`."""
    import psycopg2

    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    initdb = [postgres_bin("initdb"), "-D", str(data), "-U", DATABASE_USER, "--auth=trust"]
    run_checked(as_db_owner([*initdb, "-E", "UTF8"]))
    server = [postgres_bin("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port)]
    table.spawn("postgres", as_db_owner([*server, "-k", str(data)]), dict(os.environ), data)

    def connect():
        return psycopg2.connect(host="127.0.0.1", port=port, user=DATABASE_USER, dbname="postgres")

    wait_for("postgres", lambda: connect().close() or True)
    connection = connect()
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{database}"')
    connection.close()


def stop_postgres(table: ProcessTable, data: Path) -> bool:
    """Fast shutdown (roll back, close clients), then make sure by pid; False when it was not
    running."""
    running = table.alive().get("postgres", False)
    if running:
        command = [postgres_bin("pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"]
        subprocess.run(as_db_owner(command), capture_output=True, timeout=120)
        table.stop("postgres")
    return running


# -- Redis -------------------------------------------------------------------------------------


def start_redis(table: ProcessTable, folder: Path, port: int) -> None:
    """Redis on 127.0.0.1:`port`, nothing persisted (a broker's queue lives for the cluster)."""
    redis = shutil.which("redis-server")
    if redis is None:
        raise ServerError("redis-server not found: install Redis (`make cluster-deps`)")
    folder.mkdir(parents=True, exist_ok=True)
    command = [redis, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    table.spawn(
        "redis", [*command, "--appendonly", "no", "--dir", str(folder)], dict(os.environ), folder
    )

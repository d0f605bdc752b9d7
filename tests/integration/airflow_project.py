"""Airflow for real in tests: Airflow 3 on SQLite in a throwaway AIRFLOW_HOME, pointed at the
repository's dags/ and at a copy of the project; `dag.test()` runs through `airflow_run.py` in a
subprocess; a webhook on 127.0.0.1 that keeps the alerts it is sent."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

from shopflow.core.config import set_params
from shopflow.release.registry import Registry
from tests.conftest import BIN, ROOT, copy_project, open_registry

RUNNER = Path(__file__).with_name("airflow_run.py")


class Hook(BaseHTTPRequestHandler):
    """The alert webhook: keeps what it is sent."""

    received: ClassVar[list[dict]] = []

    def do_POST(self):
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class Airflow:
    """Airflow pointed at the repository's dags/ and at a copy of the project."""

    def __init__(self, root: Path, hook_port: int, service_port: int) -> None:
        self.project = copy_project(root / "project")
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_SHOPFLOW_ALERTS": f"http://127.0.0.1:{hook_port}/hook",
            "SHOPFLOW_PROJECT": str(self.project),
            "BENTOML_HOME": str(root / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "HF_HUB_OFFLINE": "1",
        }
        self.set_param("serving.port", service_port)
        self.call([str(BIN / "airflow"), "db", "migrate"])

    def call(self, command: list[str], timeout: float = 1800) -> str:
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.project
        )
        assert done.returncode == 0, f"{command}:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
        return done.stdout

    def run(
        self,
        date: str,
        dag_id: str = "shopflow_nightly",
        conf: dict | None = None,
        tasks: tuple[str, ...] = (),
    ) -> dict:
        """One `dag.test()` run (of only `tasks` when given); the run's state, its tasks'
        states and return values."""
        command = [sys.executable, str(RUNNER), dag_id, date, json.dumps(conf or {})]
        out = self.call([*command, ",".join(tasks)] if tasks else command)
        result = json.loads(out.strip().splitlines()[-1])
        assert "import_errors" not in result, result
        result["log"] = out
        return result

    def set_param(self, dotted: str, value) -> None:
        set_params(self.project / "params.yaml", {dotted: value})

    def registry(self) -> Registry:
        return open_registry(self.project / ".shopflow/registry")


@contextlib.contextmanager
def webhook() -> Iterator[int]:
    """The alert webhook on 127.0.0.1 (its port) for as long as the block runs."""
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()

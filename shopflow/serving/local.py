"""Running the service on this machine: `bentoml serve` on 127.0.0.1, always stopped by pid.

One command line (`serve_command`) and one readiness check (`is_ready`) for every use:
`make serve` in the foreground (`serve_foreground`), the promotion's smoke test and the tests
(`RunningService`, a context manager), and the deploy DAG's long-running local deployment
(`serve_locally` / `stop_local`, which record the pid and its start time so that a reused pid
is never signalled).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from shopflow.core.artifacts import read_json, write_json
from shopflow.core.errors import DeployError, StageInputError
from shopflow.core.processes import die_with_parent, is_running, started_at, stop_process_tree
from shopflow.serving.bento_build import MODEL_ENV, ROOT, packed_model

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SERVICE = "bento.service:Shopflow"  # the service from this source tree (no Bento)
HOST = "127.0.0.1"


def serve_command(target: str, port: int) -> list[str]:
    """`bentoml serve` of a Bento tag or of `SERVICE`, on loopback only, through the launcher
    that keeps the process manager's control sockets private."""
    launcher = "shopflow.serving.launch"
    return [sys.executable, "-m", launcher, "serve", target, "--host", HOST, "--port", str(port)]


def is_ready(base_url: str) -> bool:
    """Whether the service at `base_url` answers /readyz with 200 (models loaded)."""
    import httpx

    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def serve_foreground(target: str, port: int, env: dict[str, str], cwd: Path | None) -> int:
    """`bentoml serve` of `target` until Ctrl-C; its exit code."""
    base = f"http://{HOST}:{port}"
    served = target if target != SERVICE else env.get(MODEL_ENV)  # a Bento, or a saved model
    print(
        f"serving {served} on {base} (Ctrl-C stops it). Try:\n"
        f"  curl -s {base}/readyz\n"
        f"  curl -s -X POST {base}/search -H 'Content-Type: application/json' "
        '-d \'{"query": "oak coffee table", "k": 5}\'\n'
        f"  curl -s {base}/version",
        flush=True,
    )
    process = subprocess.Popen(
        serve_command(target, port),
        env=env,
        cwd=cwd,
        start_new_session=True,  # its own group: a terminal's Ctrl-C reaches it only through us
        preexec_fn=die_with_parent,  # and it dies with us even if we are SIGKILLed
    )
    return wait_forwarding_signals(process)


def wait_forwarding_signals(process: subprocess.Popen) -> int:
    """Wait for `process`; SIGTERM, SIGINT or SIGHUP to this process stops its whole tree
    (BentoML's arbiter and every worker) before this returns, so nothing keeps the port."""
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        log.info(
            "%s: stopping the server (pid %d) and its workers",
            signal.Signals(signum).name,
            process.pid,
        )
        stop_process_tree(process.pid, grace_s=20)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        code = process.wait()
    finally:
        if process.poll() is None:  # an exception in this process: never leave the server
            stop_process_tree(process.pid, grace_s=20)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + stopping[0] if stopping else code


class RunningService:
    """`bentoml serve` of a Bento or of `SERVICE` on 127.0.0.1, in its own session, stopped by
    pid; as a context manager it yields the base URL once /readyz answers 200."""

    def __init__(
        self,
        target: str,
        port: int,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        log_path: Path | None = None,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.target, self.port, self.cwd = target, port, cwd
        self.env = {**os.environ, **(env or {})}
        if target != SERVICE:  # a Bento: serve the model it was built with, whatever the env
            self.env[MODEL_ENV] = packed_model(target, self.env)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"shopflow-serve-{port}.log"
        self.ready_timeout_s = ready_timeout_s
        self.base = f"http://{HOST}:{port}"
        self.process: subprocess.Popen | None = None
        self._log: IO[str] | None = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the service was not started")
        return self.process.pid

    def start(self) -> str:
        """Start the server (it outlives whoever started it, until stopped by pid); the base
        URL once /readyz answers 200."""
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            serve_command(self.target, self.port),
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while not is_ready(self.base):
            if self.process.poll() is not None:
                self.stop()
                raise StageInputError(f"the service exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise StageInputError(
                    f"not ready in {self.ready_timeout_s:.0f} s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.5)
        return self.base

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process_tree(self.process.pid)
            self.process.wait()
        if self._log is not None:
            self._log.close()


def serve_locally(
    bento: str,
    version: str,
    port: int,
    state_dir: Path,
    about: dict[str, object],
    env: dict[str, str] | None = None,
) -> dict:
    """Serve `bento` (model `version`) on 127.0.0.1:`port` in the background, replacing the
    service started last time (stopped by the pid recorded in `state_dir/service.json`). If
    the new one does not come up, the previous Bento is started again and the error names
    why. `about` (the champion's entry and promotion time) is recorded with the pid."""
    import httpx

    state_file = state_dir / "service.json"
    previous: dict | None = read_json(state_file) if state_file.exists() else None
    running = previous is not None and is_running(previous["pid"], previous.get("process_started"))
    base = f"http://{HOST}:{port}"
    same = previous is not None and previous.get("experiment") == about.get("experiment")
    if previous is not None and running and previous["bento"] == bento and same and is_ready(base):
        log.info("%s already serves on port %d (pid %d)", bento, port, previous["pid"])
        return {"target": "local", "action": "unchanged", **previous}
    if previous is not None and running:
        log.info("stopping %s (pid %d)", previous["bento"], previous["pid"])
        stop_process_tree(previous["pid"])
    state_dir.mkdir(parents=True, exist_ok=True)

    def start(tag: str, at: str | None, extra: dict[str, str] | None = None) -> RunningService:
        service = RunningService(
            tag,
            port,
            env={"SHOPFLOW_PROMOTED_AT": at or "", **(extra or {})},
            log_path=state_dir / "service.log",
        )
        service.start()
        return service

    try:
        service = start(bento, str(about.get("promoted_at") or ""), env)
        served = httpx.get(f"{service.base}/version", timeout=10).json()
        if served.get("model_version") != version:
            service.stop()
            raise DeployError(f"{bento} serves model {served.get('model_version')}, not {version}")
    except StageInputError as exc:
        if previous:
            log.error("the new Bento failed (%s): starting %s again", exc, previous["bento"])
            with contextlib.suppress(StageInputError):
                back = start(previous["bento"], previous.get("promoted_at"), previous.get("env"))
                restored = {**previous, "pid": back.pid, "process_started": started_at(back.pid)}
                write_json(state_file, restored)
        raise DeployError(f"{bento} did not come up on {HOST}:{port}: {exc}") from None
    state = {
        "pid": service.pid,
        "process_started": started_at(service.pid),
        "port": port,
        "url": service.base,
        "bento": bento,
        "version": version,
        **about,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "env": env or {},  # an experiment's file and challenger: a restart serves it again
        "log": str(state_dir / "service.log"),
    }
    write_json(state_file, state)
    log.info("serving %s (model %s) on %s, pid %d", bento, version, service.base, service.pid)
    return {"target": "local", "action": "started", **state}


def stop_local(state_dir: Path) -> dict | None:
    """Stop the locally deployed service (by its recorded pid); None when none runs."""
    state_file = state_dir / "service.json"
    if not state_file.exists():
        return None
    state = read_json(state_file)
    alive = is_running(state["pid"], state.get("process_started"))
    stopped = alive and stop_process_tree(state["pid"])
    state_file.unlink()
    return {**state, "stopped": stopped}

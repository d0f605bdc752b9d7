"""BentoCloud: create a deployment of a Bento, or roll an existing one to a new Bento.

Needs `bentoml cloud login` on the machine that deploys; scaling and instance types are the
deployment's settings on BentoCloud (the API and the `Scorer` scale separately there).
"""

from __future__ import annotations

import logging
import subprocess
import sys

from shopflow.core.errors import DeployError

log = logging.getLogger(__name__)


def deploy_to_bentocloud(bento: str, name: str, env: dict[str, str] | None = None) -> dict:
    """Create the BentoCloud deployment `name`, or roll it to `bento` (rolling update), with
    `env` set in its containers (an online experiment's spec and challenger)."""
    bentoml = [sys.executable, "-m", "bentoml"]
    settings = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
    exists = subprocess.run([*bentoml, "deployment", "get", name], capture_output=True, text=True)
    if exists.returncode == 0:
        command = [*bentoml, "deployment", "update", name, "--bento", bento, *settings]
    else:
        command = [*bentoml, "deploy", bento, "-n", name, "--strategy", "RollingUpdate", *settings]
    log.info("BentoCloud: %s", " ".join(command[2:]))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise DeployError(
            f"`{' '.join(command[2:])}` failed:\n{(done.stderr or done.stdout)[-3000:]}"
        )
    return {
        "target": "bentocloud",
        "action": "updated" if exists.returncode == 0 else "created",
        "name": name,
        "bento": bento,
    }

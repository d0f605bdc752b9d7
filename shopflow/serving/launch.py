"""`python -m shopflow.serving.launch <bentoml arguments>`: BentoML's CLI, with the process
manager's control sockets private to this user (`hardening.private_control_sockets`).

Every `bentoml serve` shopflow starts goes through here (`serving.local.serve_command`). The
folder of the sockets is removed when the server exits.
"""

from __future__ import annotations

import shutil
import sys

from shopflow.serving.hardening import private_control_sockets


def main(argv: list[str]) -> None:
    """Run BentoML's CLI on `argv`; exits with its status (click's SystemExit)."""
    from bentoml_cli.cli import cli

    folder = private_control_sockets()
    try:
        cli.main(args=argv, prog_name="bentoml")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Development and infrastructure tooling, kept out of the `shopflow` package: the benchmarks
(`python -m tools.bench`, `make bench-*`), the GPU check and its bundle, and the local Airflow
cluster launcher (`python -m tools.airflow_cluster`, `make airflow-cluster`). Run from the
project root; nothing in `shopflow/`, `pipelines/`, `dags/` or `bento/` imports it."""

from __future__ import annotations

import sys
from collections.abc import Callable


def exit_code_of(label: str, action: Callable[[], object]) -> int:
    """Run a tool's `action`; a shopflow input error is one line on stderr and its exit code
    (as `python -m shopflow` does), anything else a traceback."""
    from shopflow.core.errors import ShopflowError

    try:
        action()
    except ShopflowError as exc:
        print(f"{label}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0

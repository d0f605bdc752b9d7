"""Benchmark: how long Airflow takes to parse each DAG file in `dags/`.

Airflow's DAG processor re-parses every file every `min_file_process_interval` (30 s by
default), each time in a fresh process forked from one that has Airflow loaded; whatever a
DAG file imports or computes at module level is paid on every parse. So each run here is a
fresh interpreter that imports `airflow.sdk` first (untimed, as the processor has it) and then
times `DagBag` on one file, the way the processor loads it. It also records whether the parse
pulled in torch, transformers or DVC's `Repo`, and every warning the parse raised (Airflow's
deprecation warnings included).

`make bench-dag-parse` writes `metrics/bench_dag_parse.json`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path

from shopflow.core import paths
from shopflow.core.artifacts import write_json

log = logging.getLogger(__name__)
RESULT = paths.metrics("bench_dag_parse")
HEAVY = ("torch", "transformers", "dvc.repo", "lightgbm", "bentoml")
PROBE = """
import json, sys, time, warnings
import airflow.sdk  # loaded before the fork in Airflow's DAG processor
from airflow.models import DagBag
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    started = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    seconds = time.perf_counter() - started
print(json.dumps({
    "seconds": seconds,
    "dags": sorted(bag.dag_ids),
    "import_errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
    "heavy": [m for m in sys.argv[2].split(",") if m in sys.modules],
    "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught
                        if "/dags/" in str(w.filename)}),
}))
"""


def parse_once(dag_file: Path, airflow_home: Path) -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dag_file.parent),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")])
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(dag_file), ",".join(HEAVY)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"parsing {dag_file} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def dag_parse(dags: Path = Path("dags"), runs: int = 7) -> dict:
    """Median and max parse time per DAG file over `runs` fresh processes."""
    import tempfile

    result: dict = {"runs": runs, "files": {}}
    with tempfile.TemporaryDirectory(prefix="shopflow-airflow-") as home:
        for dag_file in sorted(dags.resolve().glob("*.py")):
            parses = [parse_once(dag_file, Path(home)) for _ in range(runs)]
            seconds = [p["seconds"] for p in parses]
            about = {
                "median_s": round(statistics.median(seconds), 3),
                "max_s": round(max(seconds), 3),
                **{k: parses[-1][k] for k in ("dags", "import_errors", "heavy", "warnings")},
            }
            result["files"][dag_file.name] = about
            log.info(
                "%s: median %.3f s, max %.3f s over %d parses; heavy imports %s; warnings %d",
                dag_file.name,
                about["median_s"],
                about["max_s"],
                runs,
                about["heavy"] or "none",
                len(about["warnings"]),
            )
    write_json(RESULT, result)
    log.info("wrote %s", RESULT)
    return result

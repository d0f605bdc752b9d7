"""Run one DAG once with `dag.test()` and print what happened as JSON (for the DAG tests).

Usage: python airflow_run.py DAG_ID LOGICAL_DATE [CONF_JSON [TASK_IDS]]; TASK_IDS
(comma-separated) runs only those tasks of the DAG, in its order (`DAG.partial_subset`). Runs in a subprocess whose
environment points Airflow at a throwaway AIRFLOW_HOME (SQLite) and the project's dags/.
Prints one JSON line: the run's state, each task's state, and each task's return value.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys

from airflow.models import DagBag
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session


def main(dag_id: str, date: str, conf: str = "{}", task_ids: str = "") -> None:
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
        return
    logical = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
    dag = bag.dags[dag_id]
    if task_ids:
        dag = dag.partial_subset(task_ids.split(","), include_upstream=False)
    run = dag.test(logical_date=logical, run_conf=json.loads(conf))
    with create_session() as session:
        tis = run.get_task_instances(session=session)
        states = {ti.task_id: str(ti.state) for ti in tis}
        tries = {ti.task_id: ti.try_number for ti in tis}
        rows = session.scalars(
            XComModel.get_many(run_id=run.run_id, key="return_value", dag_ids=dag_id)
        )
        values = {row.task_id: XComModel.deserialize_value(row) for row in rows}
    print(
        json.dumps(
            {
                "state": str(run.state),
                "run_id": run.run_id,
                "tasks": states,
                "tries": tries,
                "returned": values,
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Development and infrastructure tooling, kept out of the `shopflow` package: the benchmarks
(`python -m tools.bench`, `make bench-*`), the GPU check and its bundle, and the local Airflow
cluster launcher (`python -m tools.airflow_cluster`, `make airflow-cluster`). Run from the
project root; nothing in `shopflow/`, `pipelines/`, `dags/` or `bento/` imports it."""

"""What Airflow and `make run` call: the nightly decisions, alerts and the run log."""

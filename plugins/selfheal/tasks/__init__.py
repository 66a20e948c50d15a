"""Airflow task callables: thin adapters between the DAG files and the pure core."""

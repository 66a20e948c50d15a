"""Airflow hooks for selfheal's own systems (scanner hooks live in selfheal.scanners)."""

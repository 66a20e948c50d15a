"""Triage: the system of record for findings.

* ``schema`` / ``migrations``: the tables (SQLAlchemy 2 models, Alembic revisions).
* ``store``: ingest reports (raw copy, parse, quarantine, bulk upsert,
  observations, auto-resolve, reopen) and status changes.
* ``lifecycle``: the one table of allowed status transitions.
* ``prioritize``: CVSS, EPSS, KEV, exploitability, service tier and traffic,
  mitigation and SLA age into a priority, an SSVC decision and an SLA due date.
* ``intel``: CISA KEV and FIRST EPSS loaders.

Pure Python: nothing here imports Airflow.
"""

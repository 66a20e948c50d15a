"""selfheal: a self-healing API pipeline shipped as an Airflow DAG package.

The domain core (findings, triage, patches, gateway, rollout analysis, audit)
never imports Airflow; hooks, sensors, triggers and operators wrap it.
"""

__version__ = "0.1.0"

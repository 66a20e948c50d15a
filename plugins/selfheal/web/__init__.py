"""The Airflow UI side of selfheal: the Self-Healing page, its JSON API and Prometheus metrics.

``queries`` (SQL over the triage database) and ``metrics`` (a Prometheus
collector) import neither Airflow nor FastAPI; ``app`` builds the FastAPI app,
``auth`` borrows Airflow's authentication, and ``plugin_app`` is the lazy
ASGI shim that ``plugins/selfheal_plugin.py`` registers.
"""

"""Registers selfheal with Airflow (registration only; the code lives in the `selfheal` package).

Airflow imports this file from the plugins folder; `plugins/.airflowignore`
keeps it from importing every module of the package as a would-be plugin.

* ``fastapi_apps``: the Self-Healing page, its JSON API and the Prometheus
  metrics, mounted by the API server at ``/selfheal`` (``selfheal.web``).
  The registered object is a lazy shim: the real app is built on the first
  request, so the scheduler and workers that also load plugins pay nothing.
* ``external_views``: "Self-Healing" in the UI's navigation; Airflow shows
  ``/selfheal/`` in an iframe at ``/plugin/self-healing``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from selfheal.web.plugin_app import app as selfheal_app


class SelfhealPlugin(AirflowPlugin):
    name = "selfheal"
    fastapi_apps = [{"app": selfheal_app, "url_prefix": "/selfheal", "name": "selfheal"}]
    external_views = [
        {
            "name": "Self-Healing",
            "href": "/selfheal/",
            "destination": "nav",
            "url_route": "self-healing",
            "icon": "/selfheal/static/icon.svg",
            "nav_top_level": True,
        }
    ]

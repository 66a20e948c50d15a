"""Registers selfheal with Airflow (registration only; the code lives in the `selfheal` package).

Airflow imports this file from the plugins folder; `plugins/.airflowignore`
keeps it from importing every module of the package as a would-be plugin.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class SelfhealPlugin(AirflowPlugin):
    name = "selfheal"

"""Airflow loads the selfheal plugin from plugins/ without import errors, and
does not import the package's modules as would-be plugins."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.airflow


def test_plugin_registers_without_import_errors(airflow_db) -> None:
    from airflow import plugins_manager

    names = [p["name"] for p in plugins_manager.get_plugin_info()]
    assert "selfheal" in names
    errors = plugins_manager.get_import_errors()
    assert errors == {}, errors
